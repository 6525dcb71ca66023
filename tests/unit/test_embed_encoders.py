"""Each encoder kind on tiny randomly initialised models built here (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mmpipeline.embed.encoders import (  # noqa: E402
    EncoderSpec,
    build_encoder,
    encode_image_paths,
    fingerprint_path,
)
from mmpipeline.embed.imageio import ImageFileDataset, ImageTransform  # noqa: E402

WORDS = ["navy", "blue", "shirt", "men", "women", "red", "dress", "shoes", "black", "watch", "cotton", "slim"]
TEXTS = ["navy blue shirt", "red dress", "", "black shoes men " * 20, "women watch", "slim cotton shirt"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _spec(kind, source, modality="text", **kw):
    base = dict(kind=kind, name=str(source).rsplit("/", 1)[-1], source=str(source), version="test", modality=modality,
                device="cpu", batch_size=4, max_length=16, image_size=32)
    base.update(kw)
    return EncoderSpec(**base)


def _check_text(enc, dim):
    v = enc.encode(TEXTS)
    assert v.shape == (len(TEXTS), dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    # batching and length sorting do not change a text's vector
    single = np.vstack([enc.encode([t]) for t in TEXTS])
    assert np.allclose(v, single, atol=1e-4)
    assert enc.count_truncated(TEXTS) == 1  # only the repeated one exceeds 16 tokens


def test_transformers_mean_pooling(tiny_bert):
    enc = build_encoder(_spec("transformers", tiny_bert))
    assert enc.dim == 16
    _check_text(enc, 16)


def test_sentence_transformers_and_bare_encode_agree(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    st = SentenceTransformer(modules=[models.Transformer(str(tiny_bert), max_seq_length=16),
                                      models.Pooling(16, "mean")], device="cpu")
    st.save(str(tmp_path / "st"))
    enc = build_encoder(_spec("sentence-transformers", tmp_path / "st"))
    _check_text(enc, 16)
    bare = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert np.allclose(enc.encode(TEXTS), bare, atol=1e-4)


def test_bf16_autocast_runs(tiny_bert):
    enc = build_encoder(_spec("transformers", tiny_bert, dtype="bf16"))
    assert enc.encode(TEXTS[:2]).dtype == np.float32


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, tiny_bert):
    from transformers import BertTokenizerFast, CLIPConfig, CLIPImageProcessor, CLIPModel

    d = tmp_path_factory.mktemp("tiny-clip")
    tok = BertTokenizerFast.from_pretrained(tiny_bert)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=tok.sep_token_id,
                         bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=12)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def test_clip_text_and_image(tiny_clip, fashion_images):
    t = build_encoder(_spec("clip", tiny_clip))
    assert t.dim == 12
    v = t.encode(TEXTS)
    assert v.shape == (len(TEXTS), 12)
    i = build_encoder(_spec("clip", tiny_clip, modality="image"))
    assert i.transform.size == 32 and i.dim == 12
    vecs, errs = encode_image_paths(i, fashion_images)
    assert vecs.shape == (len(fashion_images), 12) and errs == [""] * len(fashion_images)
    # text and image vectors share one space: cosine similarities are well defined
    assert np.isfinite(v @ vecs.T).all()


@pytest.fixture()
def fashion_images(shared_datasets):
    paths = sorted((shared_datasets / "fashion" / "images").glob("*.jpg"))[:6]
    return [str(p) for p in paths]


def test_torchvision_backbone_and_bad_files(fashion_images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = [fashion_images[0], str(bad), None, str(tmp_path / "missing.jpg"), *fashion_images[1:]]
    enc = build_encoder(_spec("torchvision", "resnet18", modality="image"))
    assert enc.dim == 512
    vecs, errs = encode_image_paths(enc, paths, num_workers=0)
    assert [bool(e) for e in errs] == [False, True, True, True] + [False] * (len(fashion_images) - 1)
    assert "broken" in errs[1] or "identify" in errs[1] or "Error" in errs[1]
    assert np.allclose(np.linalg.norm(vecs[[0, 4]], axis=1), 1.0, atol=1e-4)
    assert (vecs[1] == 0).all()
    # weights from a local state-dict file (what a user with torchvision weights would point at)
    import torchvision

    torch.manual_seed(1)
    sd = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), sd)
    enc2 = build_encoder(_spec("torchvision", "resnet18", modality="image", weights=str(sd)))
    v2, _ = encode_image_paths(enc2, fashion_images[:2])
    assert not np.allclose(v2, vecs[[0, 4]])


def test_image_workers_decode_in_subprocesses(fashion_images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    enc = build_encoder(_spec("torchvision", "resnet18", modality="image", batch_size=2))
    paths = [*fashion_images, str(bad)]
    v0, e0 = encode_image_paths(enc, paths, num_workers=0)
    v2, e2 = encode_image_paths(enc, paths, num_workers=2)
    assert e0 == e2 and np.allclose(v0, v2, atol=1e-5)


def test_transform_pads_to_square(fashion_images):
    from PIL import Image

    tf = ImageTransform(40, normalize=False)
    with Image.open(fashion_images[0]) as img:
        t = tf(img)
    assert tuple(t.shape) == (3, 40, 40) and t.dtype == torch.uint8
    ds = ImageFileDataset([fashion_images[0]], ImageTransform(40), max_pixels=10)
    _, _, err = ds[0]
    assert "exceeds" in err


def test_trained_tower_roundtrip(tmp_path, fashion_images):
    from mmpipeline.embed.tower.model import ImageTower, load_tower, save_tower

    torch.manual_seed(0)
    m = ImageTower("resnet18", out_dim=8, hidden=16).eval()
    folder = save_tower(m, {"arch": "resnet18", "out_dim": 8, "hidden": 16, "image_size": 32}, tmp_path / "tower")
    m2, cfg = load_tower(folder)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), m2(x), atol=1e-5)
    enc = build_encoder(_spec("trained-tower", folder, modality="image"))
    vecs, errs = encode_image_paths(enc, fashion_images[:3])
    assert vecs.shape == (3, 8) and enc.transform.size == 32


def test_fingerprint_changes_with_content(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"abc")
    a = fingerprint_path(tmp_path / "m")
    (tmp_path / "m" / "w.bin").write_bytes(b"abd")
    assert fingerprint_path(tmp_path / "m") != a


def test_tower_streams_images_in_the_batch_order_and_prefetch_matches(fashion_images, tmp_path):
    """The tower's DataLoader stream gives, batch by batch in the permutation's order, exactly the
    pixels of a direct decode (so training on the stream equals training on an in-memory cache);
    the executors' one-batch-ahead decoder gives the same batches as the dataset."""
    import torch

    from mmpipeline.embed.imageio import ImageFileDataset, ImageTransform, prefetched_batches
    from mmpipeline.embed.tower.train import scan_images, stream_images

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = [*fashion_images[:4], str(bad)]
    direct = ImageFileDataset(paths, ImageTransform(24, normalize=False))
    errs = scan_images(paths, 24, num_workers=0, progress=False)
    assert [bool(e) for e in errs] == [False] * 4 + [True]
    order = [[3, 0], [2], [1, 3]]
    got = list(stream_images(paths, order, 24, num_workers=2))
    assert len(got) == 3 and got[0].dtype == torch.uint8
    for batch, idx in zip(got, order):
        assert torch.equal(batch, torch.stack([direct[i][1] for i in idx]))
    norm = ImageTransform(24)
    pre = list(prefetched_batches(paths, norm, batch_size=2))
    assert [b[0] for b in pre] == [[0, 1], [2, 3], [4]] and pre[2][2][0]
    ref = ImageFileDataset(paths, norm)
    assert all(torch.equal(b[1][k], ref[i][1]) for b in pre for k, i in enumerate(b[0]))
