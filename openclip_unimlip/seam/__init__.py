"""The seam with OpenCLIP: the only code that touches ``open_clip`` / ``open_clip_train`` internals.

``autoload`` is what ``openclip_unimlip.pth`` runs at interpreter start (post-import hooks only);
``patches`` adapts the factory, the loss, the trainer's arguments and its epoch loop for our
models, version-guarded; ``hub`` reads and writes ``hf-hub:`` / ``local-dir:`` models. Kept free
of imports so the start-up hook stays cheap. An OpenCLIP upgrade breaks here or nowhere.
"""
