"""Stage 1's ITM pairs: which text meets which image, with which weight.

Each row b of a batch gives three image-text matching pairs (`PAIR_KINDS`,
BLIP's order): image b with text b (the positive), text b with its
hard-negative image, and image b with its hard-negative text.
`losses.itm_loss` labels them by position only ([1]*n + [0]*2n), so the
logits and weights must come in the same kind-major order: `make_pairs`
builds the inputs with one weight column per kind, `pair_logits` scores
them and lays out logits and weights together. The step scores them in chunks
(`grad_cache.chunked_sum`), so both work row-wise on any n rows.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

# Column j of `make_pairs(...)["w"]` and of the logits `pair_logits` stacks
# is kind j; `losses.itm_loss` labels kind 0 a match and the others not.
PAIR_KINDS = ("positive", "text_hard_image", "hard_text_image")


def make_pairs(ids: Array, mask: Array, tokens: Array, neg_txt: Array,
          neg_img: Array, ok_t: Array, ok_i: Array,
          valid: Array | None) -> dict[str, Array]:
  """The inputs and weights of each row's ITM pairs, batch dim first.

  Image b's two texts (its own, then its hard negative text neg_txt[b])
  share its cross-attention keys/values, projected once; text b's
  hard-negative image neg_img[b] is a gathered copy of its tokens.

  Args:
    ids, mask: int32 (B, L) the texts; tokens: (B, T, D) the image tokens.
    neg_txt, neg_img, ok_t, ok_i: `losses.sample_hard_negatives`' output.
    valid: optional bool (B,); False rows get weight 0 in every kind.

  Returns:
    own_ids, own_mask (B, 2, L) [text b, text neg_txt[b]] for image b;
    tokens (B, T, D); ids, mask (B, L) text b; neg_tokens (B, T, D) image
    neg_img[b]'s tokens; w float32 (B, 3), weight per kind: valid, valid and
    ok_i (text b has a hard image), valid and ok_t (image b has a hard text).
  """
  b = ids.shape[0]
  w_pos = jnp.ones((b,), jnp.float32) if valid is None else valid.astype(
      jnp.float32)
  return {
      "own_ids": jnp.stack([ids, ids[neg_txt]], 1),
      "own_mask": jnp.stack([mask, mask[neg_txt]], 1),
      "tokens": tokens,
      "ids": ids, "mask": mask,
      "neg_tokens": tokens[neg_img],
      "w": jnp.stack([w_pos, w_pos * ok_i, w_pos * ok_t], 1),
  }


def pair_logits(pairs: dict[str, Array], score: Callable[..., Array],
                rng: Array) -> tuple[Array, Array]:
  """Scores (n rows of) `make_pairs` -> (logits (3n, 2), weights (3n,)).

  Both come kind-major, the layout `losses.itm_loss` reads: n positives,
  n (text, hard image), n (hard text, image).

  Args:
    pairs: `make_pairs`' dict, n rows.
    score: (ids (m, L), mask (m, L), image_tokens (m/p, T, D), rng) -> (m, 2)
      logits, p consecutive texts per image (`DashClip.itm_logits`).
    rng: split into the two `score` calls' rngs.
  """
  n, _, length = pairs["own_ids"].shape
  r_own, r_neg = jax.random.split(rng)
  own = score(pairs["own_ids"].reshape(2 * n, length),
              pairs["own_mask"].reshape(2 * n, length), pairs["tokens"],
              r_own)
  neg = score(pairs["ids"], pairs["mask"], pairs["neg_tokens"], r_neg)
  own = own.reshape(n, 2, 2)  # (image, [its text, its hard text], class)
  by_kind = jnp.stack([own[:, 0], neg, own[:, 1]], 1)  # (n, 3, 2) like w.
  return _kind_major(by_kind), _kind_major(pairs["w"])


def _kind_major(x: Array) -> Array:
  """(n, 3, ...) per row and kind -> (3n, ...): all rows of kind 0 first."""
  return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])
