"""Config fields of the towers, added to a config by `add_model_fields` (no JAX imported here).

Pretrained backbones come from Hugging Face checkpoints: a local directory holding config.json
and model.safetensors (plus vocab.txt for BERT, preprocessor_config.json for ViT), or, on a
machine that reaches the hub, a model name such as 'bert-base-uncased'.
"""

import ml_collections

# name -> (default, comment). Units and meaning as the comments say.
MODEL_FIELDS = {
    "bert_path": ("", "model.text='bert': BERT checkpoint dir or hub name ('bert-base-uncased')"),
    "text_lr_mult": (0.1, "learning rate of the pretrained text backbone, x optim.lr"),
    "freeze_text_backbone": (False, "keep the pretrained text backbone fixed (no gradient)"),
    "text_token_capacity": (0.75, "model.text='bert': run BERT on the valid tokens packed into "
                                  "this fraction of the B x L positions (0: padded); a batch "
                                  "with more tokens runs padded, so only speed depends on it; "
                                  "derived from the data when model.packing_overflow > 0"),
    "region_capacity": (0.0, "model.image='regions': run the region linear + MLP on the kept "
                             "regions packed into this fraction of the B x R positions (0: "
                             "padded); a batch with more regions runs padded; derived from "
                             "data.region_drop when model.packing_overflow > 0"),
    "packing_overflow": (1e-3, "share of training steps allowed to overflow the packing "
                               "buffers (and run padded): capacities above 0 are then derived "
                               "from the training data's caption lengths and region drop "
                               "(data/packing_stats.py); 0 keeps the fractions as set"),
    "vit_path": ("", "model.image='vit': ViT checkpoint dir or hub name"),
    "image_lr_mult": (0.1, "learning rate of the pretrained image backbone, x optim.lr"),
    "freeze_image_backbone": (False, "keep the pretrained image backbone fixed (no gradient)"),
}
DATA_FIELDS = {
    "image_size": (224, "model.image='vit': side of the square RGB 'pixels' fed to the model; "
                        "must equal the ViT checkpoint's image_size"),
}


def add_model_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the backbone fields above to `config.model` / `config.data` where not already set.

  Fields: model.bert_path, model.text_lr_mult, model.freeze_text_backbone,
  model.text_token_capacity, model.region_capacity, model.packing_overflow, model.vit_path,
  model.image_lr_mult, model.freeze_image_backbone, data.image_size. Selecting the towers is
  `model.text = 'bigru' | 'bert'` and `model.image = 'regions' | 'vit'`.
  """
  for section, fields in (("model", MODEL_FIELDS), ("data", DATA_FIELDS)):
    if section not in config:
      config[section] = ml_collections.ConfigDict()
    for name, (default, _) in fields.items():
      if name not in config[section]:
        config[section][name] = default
  return config
