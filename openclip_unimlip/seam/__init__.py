"""The seam with OpenCLIP: the only code that touches ``open_clip`` / ``open_clip_train`` internals.
It reaches the recipes only through the registry's hooks (``openclip_unimlip.recipes``). Kept free
of imports so the start-up hook stays cheap. An OpenCLIP upgrade breaks here or nowhere.

- `autoload`: what ``openclip_unimlip.pth`` runs at interpreter start (post-import hooks only).
- `patches`: adapts the factory, the loss, the trainer's arguments and its epoch loop for our models,
  version-guarded.
- `hub`: loading our models by built-in name, ``hf-hub:`` and ``local-dir:``.
- `user_configs`: ``--model-config``, a user's own model configs registered before a command runs.
"""
