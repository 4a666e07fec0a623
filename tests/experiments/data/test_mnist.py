"""IDX parsing and MNISTDataModule, on tiny generated files and (when present) the real MNIST."""

import gzip
import math
import re
from pathlib import Path

import pytest
import torch
from fake_data import NAMES, STRUCT_CODES, idx_bytes, write_mnist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from experiments.data import MNISTDataModule, parse_idx, read_idx
from experiments.data.mnist import MNIST_SHA256

REAL_MNIST = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "mnist"


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "mnist"
    folder.mkdir()
    return folder, write_mnist(folder)


def make_dm(tiny: tuple[Path, dict[str, str]], **kwargs) -> MNISTDataModule:
    folder, sums = tiny
    kwargs = {"batch_size": 4, "download": False, "checksums": sums, **kwargs}
    dm = MNISTDataModule(str(folder), **kwargs)
    dm.prepare_data()
    dm.setup(None)
    return dm


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(STRUCT_CODES))
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, dtype: torch.dtype, gz: bool) -> None:
    offset = 0 if dtype == torch.uint8 else 30  # negative values for the signed types
    tensor = (torch.arange(60).reshape(3, 4, 5) - offset).to(dtype)
    if dtype.is_floating_point:
        tensor = tensor / 7  # values with a full mantissa
    raw = idx_bytes(tensor)
    path = tmp_path / ("t.idx.gz" if gz else "t.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.dtype == dtype
    assert out.shape == (3, 4, 5)
    assert torch.equal(out, tensor)


def test_idx_is_big_endian() -> None:
    # int16 [258, -2] written by hand: 0x0102, 0xfffe
    data = b"\0\0\x0b\x01" + b"\0\0\0\x02" + b"\x01\x02\xff\xfe"
    assert parse_idx(data).tolist() == [258, -2]


def test_idx_empty_dimension() -> None:
    assert parse_idx(idx_bytes(torch.zeros(0, 3, dtype=torch.uint8))).shape == (0, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\0\x08\x01\0\0\0\x01\x07", "bad IDX magic number 0x01000801"),
        (b"\0\0\x07\x01\0\0\0\x01\x07", "bad IDX magic number 0x00000701"),
        (b"\0\0", "truncated IDX file: 2 bytes"),
        (b"\0\0\x08\x02\0\0\0\x01", "truncated IDX header"),
        (b"\0\0\x08\x01\0\0\0\x03\x07\x07", r"truncated IDX file: shape \(3,\) needs 11 bytes"),
        (b"\0\0\x08\x01\0\0\0\x01\x07\x07", "trailing bytes in IDX file"),
    ],
)
def test_idx_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_idx(data)


def test_read_idx_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x08\x03\0\0" + bytes(20))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": bad IDX magic"):
        read_idx(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(torch.zeros(50, dtype=torch.uint8)))[:-6])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx(path)


# --- MNISTDataModule on tiny files ---------------------------------------------------------


def test_split_sizes_types_and_range(tiny) -> None:
    dm = make_dm(tiny)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 8)
    x, y = dm.train_set.tensors
    assert x.shape == (30, 784)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0
    # the tiny files hold every byte value 0..255 scaled by 1/255: check against the raw bytes
    raw = read_idx(tiny[0] / NAMES[0]).reshape(40, 784).double() / 255
    ids = (x[:, 0] * 255).round().long()
    assert torch.allclose(x.double(), raw[ids], atol=1e-7)


def test_split_is_a_deterministic_partition(tiny) -> None:
    def ids(dm: MNISTDataModule) -> tuple[list[int], list[int]]:
        return [
            sorted((s.tensors[0][:, 0] * 255).round().long().tolist())
            for s in (dm.train_set, dm.val_set)
        ]

    train, val = ids(make_dm(tiny, split_seed=3))
    assert sorted(train + val) == list(range(40))
    assert (train, val) == tuple(ids(make_dm(tiny, split_seed=3)))
    assert ids(make_dm(tiny, split_seed=4))[1] != val


def test_unflattened_images(tiny) -> None:
    dm = make_dm(tiny, flatten=False)
    assert dm.test_set.tensors[0].shape == (8, 1, 28, 28)


def test_loaders(tiny) -> None:
    dm = make_dm(tiny, shuffle_seed=5)

    def first_column(loader) -> list[int]:
        return [round(v * 255) for x, _ in loader for v in x[:, 0].tolist()]

    val_ids = first_column(dm.val_dataloader())
    assert val_ids == [round(v * 255) for v in dm.val_set.tensors[0][:, 0].tolist()]
    tuner = first_column(dm.hyperopt_dataloader())
    assert sorted(tuner) == sorted(val_ids) and tuner != val_ids
    assert first_column(dm.hyperopt_dataloader()) == tuner  # seeded
    epoch1 = first_column(dm.train_dataloader())
    assert epoch1 == first_column(make_dm(tiny, shuffle_seed=5).train_dataloader())
    assert epoch1 != first_column(make_dm(tiny, shuffle_seed=6).train_dataloader())
    assert [len(x) for x, _ in dm.test_dataloader()] == [4, 4]


def per_sample_loader(
    dataset: TensorDataset, batch_size: int, seed: int | None, num_workers: int = 0
) -> DataLoader:
    """The loaders as they were before batches were gathered whole: per-image fetch + collate."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=seed is not None,
        generator=None if seed is None else torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def assert_same_batches(new: DataLoader, old: DataLoader, epochs: int = 2) -> None:
    """Same number of batches, and batch by batch the same container, tensors, dtypes and
    values; over several epochs of the same loader objects (a seeded shuffle advances)."""
    assert len(new) == len(old)
    for _ in range(epochs):
        pairs = list(zip(new, old, strict=True))
        assert len(pairs) == len(old)
        for got, expected in pairs:
            assert type(got) is type(expected) and len(got) == len(expected)
            for a, b in zip(got, expected, strict=True):
                assert a.dtype == b.dtype and a.shape == b.shape and a.is_contiguous()
                assert torch.equal(a, b)


@pytest.mark.parametrize(("batch_size", "flatten"), [(4, True), (7, False), (100, True)])
def test_loaders_match_per_sample_loaders(tiny, batch_size: int, flatten: bool) -> None:
    dm = make_dm(tiny, batch_size=batch_size, flatten=flatten, shuffle_seed=3)
    cases = [
        (dm.train_dataloader(), dm.train_set, 3),
        (dm.val_dataloader(), dm.val_set, None),
        (dm.test_dataloader(), dm.test_set, None),
        (dm.hyperopt_dataloader(), dm.val_set, 4),  # shuffle_seed + 1
    ]
    for new, dataset, seed in cases:
        assert_same_batches(new, per_sample_loader(dataset, batch_size, seed))


def test_hyperopt_batch_size_sets_the_tuner_loader_only(tiny) -> None:
    dm = make_dm(tiny, batch_size=4, hyperopt_batch_size=3)
    dm.setup("fit")
    assert_same_batches(dm.hyperopt_dataloader(), per_sample_loader(dm.val_set, 3, 1))
    assert dm.val_dataloader().batch_size == dm.train_dataloader().batch_size == 4
    with pytest.raises(ValueError, match="hyperopt_batch_size"):
        make_dm(tiny, hyperopt_batch_size=0)


def test_loader_with_workers_matches(tiny) -> None:
    dm = make_dm(tiny, num_workers=1, shuffle_seed=2)
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    # with workers, each epoch's iterator also draws the workers' seed from the generator
    assert_same_batches(loader, per_sample_loader(dm.train_set, 4, 2, num_workers=1))


def test_loaders_take_lightnings_distributed_sampler(tiny) -> None:
    """Under DDP Lightning rebuilds the loader around a DistributedSampler: each rank then
    gets whole batches of its own share of the indices, and the ranks cover the split."""
    from pytorch_lightning.utilities.data import _is_dataloader_shuffled, _update_dataloader

    dm = make_dm(tiny)
    x, y = dm.train_set.tensors
    train = dm.train_dataloader()
    assert _is_dataloader_shuffled(train) and not _is_dataloader_shuffled(dm.val_dataloader())
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(train.dataset, num_replicas=2, rank=rank, seed=5)
        loader = _update_dataloader(train, sampler)
        indices = list(sampler)
        batches = list(loader)
        assert len(batches) == len(loader) == 4  # 15 indices per rank, batch 4
        assert torch.equal(torch.cat([b[0] for b in batches]), x[indices])
        assert torch.equal(torch.cat([b[1] for b in batches]), y[indices])
        seen += indices
    assert sorted(seen) == list(range(30))


def test_train_size_keeps_the_first_images_of_the_split(tiny) -> None:
    whole = make_dm(tiny, split_seed=2)
    dm = make_dm(tiny, split_seed=2, train_size=12)
    for a, b in zip(dm.train_set.tensors, whole.train_set.tensors, strict=True):
        assert torch.equal(a, b[:12])
    for a, b in zip(dm.val_set.tensors, whole.val_set.tensors, strict=True):
        assert torch.equal(a, b)  # the validation split does not change
    assert len(dm.train_dataloader()) == 3
    assert len(make_dm(tiny, train_size=30).train_set) == 30  # all of them


def test_train_size_larger_than_the_split(tiny) -> None:
    with pytest.raises(ValueError, match=r"train_size=31 exceeds the 30 images .*\[1, 30\]"):
        make_dm(tiny, train_size=31)


def test_setup_stages(tiny) -> None:
    folder, sums = tiny
    dm = MNISTDataModule(str(folder), download=False, checksums=sums)
    with pytest.raises(RuntimeError, match=r"setup\('fit'\)"):
        dm.train_dataloader()
    dm.setup("test")
    assert dm.train_set is None and len(dm.test_set) == 8


def test_checksum_mismatch(tiny) -> None:
    folder, sums = tiny
    wrong = "0" * 64
    dm = MNISTDataModule(str(folder), download=False, checksums={**sums, NAMES[1]: wrong})
    message = re.escape(
        f"{folder / NAMES[1]}: sha256 mismatch: expected {wrong}, got {sums[NAMES[1]]}"
    )
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")
    # the official sums reject the tiny files, and verify=False accepts them
    with pytest.raises(ValueError, match=re.escape(MNIST_SHA256[NAMES[0]])):
        MNISTDataModule(str(folder), download=False).setup("fit")
    MNISTDataModule(str(folder), download=False, verify=False).setup("fit")


def test_missing_files(tmp_path: Path) -> None:
    dm = MNISTDataModule(str(tmp_path), download=False)
    message = re.escape(str(tmp_path)) + ": missing train-images-idx3-ubyte.gz, .*t10k-labels"
    with pytest.raises(FileNotFoundError, match=message):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        dm.setup("fit")


def test_download_from_mirror(tiny, tmp_path: Path) -> None:
    folder, sums = tiny
    target = tmp_path / "downloaded"
    dm = MNISTDataModule(str(target), checksums=sums, mirror=folder.as_uri())
    dm.prepare_data()
    assert sorted(p.name for p in target.iterdir()) == sorted(NAMES)
    dm.setup("fit")
    assert len(dm.train_set) == 30


def test_download_checksum_mismatch_leaves_nothing(tiny, tmp_path: Path) -> None:
    folder, sums = tiny
    target = tmp_path / "downloaded"
    dm = MNISTDataModule(
        str(target), checksums={**sums, NAMES[0]: "0" * 64}, mirror=folder.as_uri()
    )
    with pytest.raises(
        ValueError, match=f"downloaded {re.escape(folder.as_uri())}.*sha256 mismatch"
    ):
        dm.prepare_data()
    assert list(target.iterdir()) == []


def test_download_failure(tmp_path: Path) -> None:
    dm = MNISTDataModule(str(tmp_path / "d"), mirror=(tmp_path / "nowhere").as_uri())
    with pytest.raises(FileNotFoundError, match=r"expected files: train-images.*downloading"):
        dm.prepare_data()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size=2.5 must be an integer >= 1"),
        ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\), got 0.0"),
        ({"val_fraction": 1}, r"val_fraction must be in \(0, 1\), got 1"),
        ({"val_fraction": math.nan}, r"val_fraction must be in \(0, 1\)"),
        ({"val_fraction": "0.5"}, "val_fraction must be a number"),
        ({"num_workers": -1}, "num_workers=-1 must be an integer >= 0"),
        ({"split_seed": -1}, "split_seed=-1 must be an integer >= 0"),
        ({"train_size": 0}, "train_size must be an integer >= 1 or None, got 0"),
        ({"train_size": 2.5}, "train_size must be an integer >= 1 or None, got 2.5"),
        ({"train_size": True}, "train_size must be an integer >= 1 or None"),
        (
            {"checksums": {"train-images": "x"}},
            r"checksums: unknown file name\(s\) \['train-images'\]",
        ),
    ],
)
def test_constructor_validation(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(str(tmp_path), **kwargs)


def test_empty_split(tiny) -> None:
    with pytest.raises(ValueError, match="leaves an empty split"):
        make_dm(tiny, val_fraction=0.001)


def test_cli_parses_constructor(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MNISTDataModule, "data")
    cfg = parser.parse_args(
        ["--data.data_dir", str(tmp_path), "--data.batch_size", "7", "--data.download", "false"]
    )
    assert (cfg.data.batch_size, cfg.data.download, cfg.data.val_fraction) == (7, False, 0.25)
    assert cfg.data.train_size is None
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, MNISTDataModule) and dm.batch_size == 7
    cfg = parser.parse_args(["--data.data_dir", str(tmp_path), "--data.train_size", "5000"])
    assert parser.instantiate(cfg).data.train_size == 5000
    with pytest.raises(SystemExit):  # the parser refuses a non-integer
        parser.parse_args(["--data.data_dir", str(tmp_path), "--data.train_size", "0.5"])


def test_trains_with_lightning(tiny) -> None:
    import pytorch_lightning as pl

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(784, 10)
            self.validated = 0

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            self.validated += len(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model = Classifier()
    trainer.fit(model, datamodule=make_dm(tiny))
    assert trainer.global_step == 8  # 30 training images, batch 4
    assert model.validated == 8 + 10  # the sanity check (2 batches of 4), then all 10 images


# --- the real MNIST --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> MNISTDataModule:
    if not REAL_MNIST.is_dir():
        pytest.skip(f"no MNIST at {REAL_MNIST}")
    dm = MNISTDataModule(str(REAL_MNIST), download=False)
    dm.setup(None)
    return dm


def test_real_sizes(real: MNISTDataModule) -> None:
    assert (len(real.train_set), len(real.val_set), len(real.test_set)) == (45000, 15000, 10000)
    assert real.train_set.tensors[0].shape == (45000, 784)
    assert real.val_set.tensors[0].min() >= 0.0 and real.val_set.tensors[0].max() <= 1.0


def test_real_raw_files() -> None:
    if not REAL_MNIST.is_dir():
        pytest.skip(f"no MNIST at {REAL_MNIST}")
    labels = read_idx(REAL_MNIST / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and labels.dtype == torch.uint8
    assert labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # the well-known first digits
    assert read_idx(REAL_MNIST / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
