"""The part of OpenCLIP's ``DataInfo`` that ``open_clip_train.train.train_one_epoch`` reads, over
batches held in memory: ``{"train": InMemoryData(batches)}`` drives the trainer's own epoch loop."""


class _Loader(list):
    def __init__(self, batches):
        super().__init__(batches)
        self.num_batches = len(batches)
        self.num_samples = sum(len(batch[0]) for batch in batches)


class InMemoryData:
    def __init__(self, batches):
        self.dataloader = _Loader(batches)

    def set_epoch(self, epoch):
        pass
