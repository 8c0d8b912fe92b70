"""Protein property prediction (SMC-Bench's ESM track, ``spec/protein.md``): the data layer.

:mod:`.tokenizer` turns residues into ESM token ids; :mod:`.data` loads FLIP meltome and TAPE stability (and
dispatches to :mod:`.hotprotein`); :mod:`.hub` reads hub tables; :mod:`.records` holds the split container and
the dedupe / validation-carve steps every dataset shares.
"""
