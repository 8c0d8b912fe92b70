"""Protein property prediction (SMC-Bench's ESM track, ``spec/protein.md``).

:mod:`.task` is the engine's :class:`ProteinTask`; :mod:`.head` the model around the encoder (pooling, SMC-Bench's
head, its optimizer group); :mod:`.examples` the dataset names, label views and token buffers; :mod:`.tokenizer`
turns residues into ESM token ids; :mod:`.data` loads FLIP meltome and TAPE stability (and dispatches to
:mod:`.hotprotein`); :mod:`.hub` reads hub tables; :mod:`.records` holds the split container and the dedupe /
validation-carve steps every dataset shares.
"""

from smc_jax.tasks.protein.head import protein_head_group
from smc_jax.tasks.protein.task import ProteinTask

__all__ = ["ProteinTask", "protein_head_group"]
