"""Graph2Tree's graphs (smc_jax.tasks.arithmetic.graphs) against a step-by-step transliteration of the original's
``pre_data.py`` rules (spec/graph2tree.md §1) on real rows of ../shared/data/arithmetic: word-level graphs for
learned embeddings, sub-token graphs with a byte-level BPE tokenizer (``index_retrieve``, the group remap, the
word-level ``num_pos`` quirk and the aligned fix), the padded batch graphs, and the task's batches."""

import numpy as np
import pytest
from conftest import SHARED_DATA

from smc_jax.tasks.arithmetic import data, graphs
from smc_jax.tasks.arithmetic.task import ArithmeticTask

DATA = SHARED_DATA / "arithmetic"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")


# ------------------------------------------------------------------ the original, transliterated (pre_data.py)


def orig_change_num(num):
    new_num = []
    for item in num:
        if "/" in item:
            new_str = item.split(")")[0]
            new_str = new_str.split("(")[1]
            a = float(new_str.split("/")[0])
            b = float(new_str.split("/")[1])
            new_num.append(a / b)
        elif "%" in item:
            new_num.append(float(item[0:-1]) / 100)
        else:
            new_num.append(float(item))
    return new_num


def orig_greater_num_graph(max_len, sentence_length, num_list, id_num_list):
    diag_ele = np.zeros(max_len)
    num_list = orig_change_num(num_list)
    for i in range(sentence_length):
        diag_ele[i] = 1
    graph = np.diag(diag_ele)
    for i in range(len(id_num_list)):
        for j in range(len(id_num_list)):
            if float(num_list[i]) > float(num_list[j]):
                graph[id_num_list[i]][id_num_list[j]] = 1
            else:
                graph[id_num_list[j]][id_num_list[i]] = 1
    return graph


def orig_attribute_between_graph(input_batch, max_len, id_num_list, sentence_length, quantity_cell_list):
    diag_ele = np.zeros(max_len)
    for i in range(sentence_length):
        diag_ele[i] = 1
    graph = np.diag(diag_ele)
    for i in id_num_list:
        for j in quantity_cell_list:
            if i < max_len and j < max_len and j not in id_num_list and abs(i - j) < 4:
                graph[i][j] = 1
                graph[j][i] = 1
    for i in quantity_cell_list:
        for j in quantity_cell_list:
            if i < max_len and j < max_len:
                if input_batch[i] == input_batch[j]:
                    graph[i][j] = 1
                    graph[j][i] = 1
    return graph


def orig_single_batch_graph(input_batch, input_length, group, num_value, num_pos):
    """get_single_batch_graph, slots 1 (greater) and 4 (attribute-between) only: the two the model reads."""
    batch_graph = []
    max_len = max(input_length)
    for i in range(len(input_length)):
        graph_greater = orig_greater_num_graph(max_len, input_length[i], num_value[i], num_pos[i])
        graph_attbet = orig_attribute_between_graph(input_batch[i], max_len, num_pos[i], input_length[i], group[i])
        batch_graph.append([graph_greater.tolist(), graph_attbet.tolist()])
    return np.array(batch_graph)


def orig_single_example_graph(input_batch, input_length, group, num_value, num_pos):
    """get_single_example_graph (max_len = sentence_length = the example's length), slots 1 and 4."""
    return np.array([orig_greater_num_graph(input_length, input_length, num_value, num_pos).tolist(),
                     orig_attribute_between_graph(input_batch, input_length, num_pos, input_length, group).tolist()])


def orig_index_retrieve(tokens):
    """contextual_embeddings.py: word k -> its first sub-token ('Ġ' marks a word start; <s> is position 0)."""
    index = [1]
    for j in range(2, len(tokens)):
        if tokens[j][0] == "\u0120":
            index.append(j)
    return index


# ------------------------------------------------------------------ real rows


@pytest.fixture(scope="module")
def rows():
    """MAWPS fold 0 training problems with each kind of case the spec names, a few of each."""
    problems = data.load_problems(data.split_path(DATA, "mawps", 0, "train"))
    equal = [p for p in problems if len({float(x) for x in p.numbers}) < len(p.numbers)]
    duplicate = [p for p in problems if len(set(p.group_nums)) < len(p.group_nums)]
    outside = [p for p in problems if any(k >= len(p.tokens) for k in p.group_nums)]
    assert equal and duplicate and outside
    return {"equal": equal[:6], "duplicate": duplicate[:6], "outside": outside[:6], "plain": problems[:6],
            "all": problems}


@pytest.fixture(scope="module")
def bpe(rows):
    """A byte-level BPE tokenizer (RoBERTa's kind, 400 tokens) trained on the MAWPS questions."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([" ".join(p.tokens) for p in rows["all"]], vocab_size=400, min_frequency=2,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return transformers.RobertaTokenizerFast(tokenizer_object=tokenizer._tokenizer, bos_token="<s>", eos_token="</s>",
                                             sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                             mask_token="<mask>")


def dense(edges, n):
    return graphs.batch_graphs([edges], n)[0]


def test_change_num_follows_the_original():
    numbers = ["3", "2.5", "(1/4)", "1(1/2)", "50%", "12.0"]
    assert graphs.change_num(numbers) == orig_change_num(numbers) == [3.0, 2.5, 0.25, 0.5, 0.5, 12.0]
    with pytest.raises(ValueError, match="'\\(a/b\\)'"):
        graphs.change_num(["1/2"])  # the original's split('(')[1] raises IndexError


def test_word_level_graphs_equal_the_original_rules(rows):
    """Learned embeddings: graphs over the words, each example built as the original's example builder does
    (indices past the example's words link nothing)."""
    vocab = data.build_vocab(rows["all"], [])
    for kind in ("equal", "duplicate", "outside", "plain"):
        for problem in rows[kind]:
            example = data.encode(problem, vocab)
            ours = dense(graphs.example_edges(problem, example), len(example.input_ids))
            expected = orig_single_example_graph(list(example.input_ids), len(example.input_ids),
                                                 list(problem.group_nums), list(problem.numbers),
                                                 list(problem.num_pos))
            np.testing.assert_array_equal(ours, expected.astype(bool), err_msg=f"{kind}: {' '.join(problem.tokens)}")
    # equal numbers are linked both ways; other pairs one way only
    problem = rows["equal"][0]
    example = data.encode(problem, vocab)
    greater = dense(graphs.example_edges(problem, example), len(example.input_ids))[0]
    values = graphs.change_num(problem.numbers)
    for s, ps in enumerate(problem.num_pos):
        for t, pt in enumerate(problem.num_pos):
            assert greater[ps, pt] == (values[s] >= values[t])
    assert any(values[s] == values[t] and s != t and greater[problem.num_pos[s], problem.num_pos[t]]
               and greater[problem.num_pos[t], problem.num_pos[s]]
               for s in range(len(values)) for t in range(len(values)))


@pytest.mark.parametrize("number_positions", ["original", "aligned"])
def test_subtoken_graphs_equal_the_original_rules(rows, bpe, number_positions):
    """A pretrained encoder: the text tokenised with a byte-level BPE, group_nums remapped through index_retrieve
    (order and duplicates kept, indices past the last word dropped), numbers at the word indices ('original',
    the quirk) or at their first sub-tokens ('aligned'); the original's batch builder over a padded batch."""
    vocab = data.build_vocab(rows["all"], [], dev_words=True)
    for kind in ("equal", "duplicate", "outside", "plain"):
        problems = rows[kind]
        examples = [data.encode(p, vocab, bpe, number_positions) for p in problems]
        edges = [graphs.example_edges(p, e, bpe) for p, e in zip(problems, examples)]
        lengths = [len(e.input_ids) for e in examples]
        ids = [list(e.input_ids) + [bpe.pad_token_id] * (max(lengths) - len(e.input_ids)) for e in examples]
        groups = []
        for p, e in zip(problems, examples):
            index = orig_index_retrieve(bpe.convert_ids_to_tokens(list(e.input_ids)))
            assert len(index) == len(p.tokens)
            groups.append([index[k] for k in p.group_nums if k < len(index)])
        if kind == "outside":
            assert any(len(g) < len(p.group_nums) for g, p in zip(groups, problems))
        if kind == "duplicate":
            assert any(len(set(g)) < len(g) for g in groups)
        positions = [list(p.num_pos) if number_positions == "original" else list(e.num_pos)
                     for p, e in zip(problems, examples)]
        expected = orig_single_batch_graph(ids, lengths, groups, [list(p.numbers) for p in problems], positions)
        length = max(lengths) + 5  # the batch's bucket: longer than its longest row
        ours = graphs.batch_graphs(edges, length)
        np.testing.assert_array_equal(ours[:, :, :max(lengths), :max(lengths)], expected.astype(bool), err_msg=kind)
        assert not ours[:, :, max(lengths):].any() and not ours[:, :, :, max(lengths):].any()
        for e, pos in zip(examples, positions):
            assert list(e.num_pos) == pos
            if number_positions == "aligned":  # the fix: each number at its own first sub-token
                assert all(bpe.convert_ids_to_tokens(e.input_ids[k]).lstrip("\u0120").startswith("N") for k in pos)


def test_padded_batch_graphs_equal_the_per_example_ones(rows):
    vocab = data.build_vocab(rows["all"], [])
    problems = rows["outside"] + rows["equal"]
    examples = [data.encode(p, vocab) for p in problems]
    edges = [graphs.example_edges(p, e) for p, e in zip(problems, examples)]
    batch = graphs.batch_graphs(edges, 96)
    assert batch.shape == (len(problems), 2, 96, 96) and batch.dtype == bool
    for row, (e, edge) in enumerate(zip(examples, edges)):
        n = len(e.input_ids)
        single = graphs.example_graphs(e.input_ids, e.num_pos, problems[row].group_nums,
                                       graphs.change_num(e.numbers))
        np.testing.assert_array_equal(batch[row, :, :n, :n], single)
        assert not batch[row, :, n:].any() and not batch[row, :, :, n:].any()  # no self-loops on padding
        assert edge.dtype == np.int16 and edge.shape[1] == 3
    with pytest.raises(ValueError, match="more than the batch length"):
        graphs.batch_graphs(edges, 8)


def test_the_task_batches_carry_the_graphs():
    task = ArithmeticTask(data_dir=str(DATA), model="graph2tree", max_train_examples=12, max_eval_examples=5,
                          hidden=8, embedding_size=8, batch_size=4, input_buckets=(64, 96), target_buckets=(16,))
    assert task.model_name == "graph2tree" and len(task.train_graphs) == 12 and len(task.dev_graphs) == 5
    for indices in task.epoch_order(seed=3, epoch=0):
        batch = task.make_train_batch(indices)
        length = batch["input_ids"].shape[1]
        rows = list(indices) + [indices[0]] * (task.batch_size - len(indices))  # padded rows repeat the first
        np.testing.assert_array_equal(batch["graph"], graphs.batch_graphs([task.train_graphs[i] for i in rows],
                                                                          length))
    (chunk,) = task.eval_sets()["dev"]
    assert chunk.count == 5 and chunk.batch["graph"].shape == (5, 2, 64, 64)
    np.testing.assert_array_equal(chunk.batch["graph"], graphs.batch_graphs(task.dev_graphs, 64))
    # evaluation batches list their real tokens (b * 64 + t), padded with 5 * 64, for the graph module
    lengths = chunk.batch["lengths"]
    expected = [b * 64 + t for b, n in enumerate(lengths) for t in range(n)]
    positions = chunk.batch["gcn_positions"]
    assert len(positions) == -(-sum(lengths) // 128) * 128 and list(positions[:len(expected)]) == expected
    assert set(positions[len(expected):]) == {5 * 64}
    gts = ArithmeticTask(data_dir=str(DATA), max_train_examples=4, max_eval_examples=2, hidden=8, embedding_size=8)
    assert "graph" not in gts.make_train_batch([0, 1]) and gts.train_graphs is None
    assert "model" not in gts.config() and task.config()["model"] == "graph2tree"  # GTS's dense-run hash is unchanged
