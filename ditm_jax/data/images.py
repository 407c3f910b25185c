"""Encoded image files (JPEG) to the uint8 pixels the ViT tower reads."""
import tensorflow as tf


def decode_images(jpegs, size):
  """uint8 (B, size, size, 3) RGB from encoded images, resized (antialiased) to a square."""

  def one(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, [size, size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.map_fn(one, jpegs, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
