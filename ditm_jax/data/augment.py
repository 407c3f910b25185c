"""Caption augmentation at training time: token drop (region drop is `plan.region_keep`)."""
import tensorflow as tf


def token_drop(tokens, lengths, rate, seed, tokenizer):
  """VSE-infinity-style caption augmentation: each token is hit with probability `rate`.

  A hit token is deleted (the rest move left) or, with equal chance, replaced by the
  tokenizer's mask id (<unk> for the word vocabulary, [MASK] for BERT). [CLS] and [SEP]
  (`keep_ends`) are never hit, and a caption keeps at least one token.

  Args:
    tokens: (N, L) int token ids, padded with the tokenizer's pad id.
    lengths: (N,) valid tokens per caption.
    rate: probability that a token is hit; 0 returns the inputs.
    seed: stateless seed, shape (2,).
    tokenizer: the manifest's tokenizer entry (pad_id, mask_id, keep_ends).

  Returns:
    (tokens (N, L), lengths (N,)) after the drop.
  """
  if rate <= 0:
    return tokens, lengths
  n, length = tf.shape(tokens)[0], tokens.shape[1]
  pos = tf.range(length, dtype=lengths.dtype)[None, :]
  valid = pos < lengths[:, None]
  eligible = valid
  if tokenizer["keep_ends"]:
    eligible &= (pos > 0) & (pos < lengths[:, None] - 1)
  u = tf.random.stateless_uniform(tf.stack([n, length]), seed=seed)
  hit = eligible & (u < rate)
  delete = hit & (u < rate / 2)
  tokens = tf.where(hit & ~delete, tf.cast(tokenizer["mask_id"], tokens.dtype), tokens)
  keep = valid & ~delete
  empty = ~tf.reduce_any(keep & eligible, axis=1, keepdims=True)  # all deleted: undo the first
  undo = empty & (tf.cumsum(tf.cast(eligible, tf.int32), axis=1) == 1) & eligible
  keep |= undo
  order = tf.argsort(tf.where(keep, pos, pos + length), axis=1, stable=True)  # kept first
  tokens = tf.gather(tokens, order, batch_dims=1)
  lengths = tf.reduce_sum(tf.cast(keep, lengths.dtype), axis=1)
  pad = tf.cast(tokenizer["pad_id"], tokens.dtype)
  return tf.where(pos < lengths[:, None], tokens, pad), lengths
