"""Our tokenizer as a Hugging Face tokenizer: the same ids, caption cleaning
included.

`dashclip_jax.load` cleans every text with BLIP's `tokenizer.pre_caption`
(lower-case; . ! " ( ) * # : ; ~ become spaces; whitespace runs become one
space; at most `caption_max_words` space-separated words) before BERT's
uncased WordPiece. A plain BERT tokenizer differs on those characters
(BERT keeps each as a token: "shirt." is [shirt, .]) and on texts over the
word cap. Here the cleaning is the first normalizer of the `tokenizers`
pipeline, so the exported tokenizer (saved as a plain `tokenizer.json`,
class TokenizersBackend) gives our ids for raw text, in transformers and in
sentence-transformers alike. The word cap is a regex that drops everything
after the cap's last word (Oniguruma's `\\K`).

Not the same: text that spells a special token ("[SEP]") is split out as
that token here, while pre_caption lower-cases it first.
"""

from __future__ import annotations

from tokenizers import normalizers
from tokenizers import Regex
import transformers

from dashclip_jax.export_hf.errors import ExportError
from dashclip_jax.model import tokenizer as tok

# tokenizer.pre_caption's steps, as regexes on the raw text.
_CAPTION_PUNCT = r'[.!"()*#:;~]'


def caption_normalizer(max_words: int) -> normalizers.Normalizer:
  """pre_caption(text, max_words) as normalizers (before BERT's own)."""
  return normalizers.Sequence([
      normalizers.Replace(Regex(_CAPTION_PUNCT), " "),
      normalizers.Replace(Regex(r"\s{2,}"), " "),
      normalizers.Replace(Regex(r"\A +| +\z"), ""),
      # After the two above, words are separated by exactly one space.
      normalizers.Replace(Regex(rf"\A(?:[^ ]* ){{{max_words}}}\K[\s\S]*"),
                          ""),
  ])


def hf_tokenizer(vocab_file: str, max_length: int, caption_max_words: int
                 ) -> transformers.PreTrainedTokenizerFast:
  """Our BlipTokenizer + pre_caption as one HF tokenizer.

  `model_max_length` is `max_length`, so `truncation=True` cuts where ours
  does (words dropped, final [SEP] kept).
  """
  bert = transformers.BertTokenizer(vocab=vocab_file, do_lower_case=True)
  backend = bert.backend_tokenizer
  backend.normalizer = normalizers.Sequence(
      [caption_normalizer(caption_max_words), backend.normalizer])
  out = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]",
      pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
      bos_token="[DEC]", additional_special_tokens=["[ENC]"],
      model_max_length=max_length, padding_side="right")
  got = out.convert_tokens_to_ids(["[PAD]", "[CLS]", "[SEP]", "[DEC]",
                                   "[ENC]"])
  want = [tok.PAD_ID, tok.CLS_ID, tok.SEP_ID, tok.DEC_ID, tok.ENC_ID]
  if got != want or len(out) != tok.VOCAB_SIZE:
    raise ExportError(f"{vocab_file}: special token ids {got} (want {want}) "
                      f"and {len(out)} tokens (want {tok.VOCAB_SIZE}): not "
                      "bert-base-uncased's vocab")
  return out
