import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from smc_jax.models.tree_schedule import batch_schedule, example_schedule

NUM_START = 4  # ids 0-3 are operators, 4+ are numbers


def original_train_tree(target, num_start):
    """A transliteration of the original train_tree loop for one example, with symbolic embeddings."""
    node_stack = ["root"]
    embeddings_stack = []  # (embedding, terminal)
    left_child = None
    log = []
    for t, token in enumerate(target):
        if not node_stack:
            log.append(None)
            left_child = None
            continue
        current = node_stack[-1]
        goal = f"q({current},{left_child})"
        left, right = f"L{t}[{goal}]", f"R{t}[{goal}]"
        node_stack.pop()
        result = None
        if token < num_start:
            node_stack.append(right)
            node_stack.append(left)
            embeddings_stack.append((f"op{token}", False))
        else:
            current_num = f"num{token}@{t}"
            while embeddings_stack and embeddings_stack[-1][1]:
                sub_tree = embeddings_stack.pop()[0]
                op = embeddings_stack.pop()[0]
                current_num = f"merge({op},{sub_tree},{current_num})"
            embeddings_stack.append((current_num, True))
            result = current_num
        left_child = embeddings_stack[-1][0] if embeddings_stack and embeddings_stack[-1][1] else None
        log.append((goal, result))
    return log


def replay(target, schedule, b=0):
    """Execute a schedule with buffers, as the jitted decoder does."""
    goals, terminals, log = {0: "root"}, {}, []
    for t, token in enumerate(target):
        slot = int(schedule.node_slot[b, t])
        if slot < 0:
            log.append(None)
            continue
        left = int(schedule.left_step[b, t])
        goal = f"q({goals[slot]},{terminals[left] if left >= 0 else None})"
        goals[1 + 2 * t], goals[2 + 2 * t] = f"L{t}[{goal}]", f"R{t}[{goal}]"
        result = None
        if not schedule.is_op[b, t]:
            result = f"num{token}@{t}"
            for op, sub in zip(schedule.merge_op[b, t], schedule.merge_sub[b, t]):
                if op >= 0:
                    result = f"merge(op{target[op]},{terminals[sub]},{result})"
            terminals[t] = result
        log.append((goal, result))
    return log


def test_hand_computed_schedule():
    # "* + N0 N1 N2" = (N0 + N1) * N2
    target = [2, 0, 4, 5, 6]
    slots, lefts, merges = example_schedule(target, NUM_START)
    assert slots == [0, 1, 3, 4, 2]
    assert lefts == [-1, -1, -1, 2, 3]
    assert merges == [[], [], [], [(1, 2)], [(0, 3)]]


@st.composite
def prefix_expression(draw, depth=0):
    if depth >= 4 or draw(st.booleans()):
        return [draw(st.integers(NUM_START, NUM_START + 5))]
    op = draw(st.integers(0, NUM_START - 1))
    return [op] + draw(prefix_expression(depth + 1)) + draw(prefix_expression(depth + 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(prefix_expression(), min_size=1, max_size=4), st.integers(0, 3))
def test_schedule_replays_the_original_stacks(targets, extra):
    length = max(len(t) for t in targets) + extra
    schedule = batch_schedule(targets, NUM_START, length)
    assert schedule.node_slot.shape == (len(targets), length)
    for b, target in enumerate(targets):
        padded = target + [NUM_START] * (length - len(target))
        assert replay(padded, schedule, b)[: len(target)] == original_train_tree(target, NUM_START)
        assert (schedule.node_slot[b, len(target):] == -1).all()
        assert schedule.is_op[b, : len(target)].tolist() == [t < NUM_START for t in target]


def test_merge_depth_is_the_deepest_cascade():
    # "+ N0 + N1 + N2 N3": the last number closes three sub-trees
    schedule = batch_schedule([[0, 4, 0, 5, 0, 6, 7], [4]], NUM_START, 7)
    assert schedule.merge_op.shape == (2, 7, 3)
    np.testing.assert_array_equal(schedule.merge_op[0, 6], [4, 2, 0])
    np.testing.assert_array_equal(schedule.merge_sub[0, 6], [5, 3, 1])
