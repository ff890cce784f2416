"""Reading, refusing and downloading backbone weights; the training switches of the ViT.

Every refusal is a `WeightsError` (an `InputError`: the CLI prints it on one line), and its message must name the
problem, so each test checks the words a user needs to see, not only the exception type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from birder.model_registry import registry

import birddet.backbone.vit as vit_module
from birddet.backbone.weights import (
    REGISTERED_WEIGHTS,
    download_weights,
    load_backbone,
    read_birder_file,
    resolve_weights,
)
from birddet.errors import InputError, WeightsError

TINY_OVERRIDE = {"num_layers": 2, "num_heads": 2, "hidden_dim": 64, "mlp_dim": 128}


def resave(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a birder file after applying `edit(dict)` to its contents."""
    obj = torch.load(src, weights_only=True)
    edit(obj)
    torch.save(obj, dst)
    return dst


# -- damaged and foreign files -------------------------------------------------------------------------------
def test_truncated_file_is_refused_as_truncated_or_corrupted(tiny_birder_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    data = tiny_birder_file.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupted") as err:
        load_backbone(cut)
    assert str(cut) in str(err.value)


def test_zero_byte_file_is_refused_as_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(WeightsError, match=r"empty \(0 bytes\)"):
        load_backbone(empty)


def test_missing_tensor_is_named(tiny_birder_file: Path, tmp_path: Path) -> None:
    path = resave(tiny_birder_file, tmp_path / "missing.pt", lambda o: o["state"].pop("encoder.block.1.mlp.3.bias"))
    with pytest.raises(WeightsError, match=r"missing 1 key\(s\) \(encoder\.block\.1\.mlp\.3\.bias\)"):
        load_backbone(path)


def test_unexpected_tensor_is_named(tiny_birder_file: Path, tmp_path: Path) -> None:
    path = resave(tiny_birder_file, tmp_path / "extra.pt", lambda o: o["state"].update(head_bias=torch.zeros(5)))
    with pytest.raises(WeightsError, match=r"unexpected 1 key\(s\) \(head_bias\)"):
        load_backbone(path)


def test_missing_file_field_is_named(tiny_birder_file: Path, tmp_path: Path) -> None:
    path = resave(tiny_birder_file, tmp_path / "nosig.pt", lambda o: o.pop("signature"))
    with pytest.raises(WeightsError, match="missing the field.*signature"):
        load_backbone(path)


def _birder_file_of(network: str, path: Path) -> Path:
    net = registry.net_factory(network, 5, config=TINY_OVERRIDE, size=(64, 64))
    torch.save(
        {
            "state": net.state_dict(),
            "birder_version": "0.8.4",
            "task": "image_classification",
            "signature": {"inputs": [{"data_shape": [0, 3, 64, 64]}], "outputs": [{"data_shape": [0, 5]}]},
            "class_to_idx": {str(i): i for i in range(5)},
            "rgb_stats": {"mean": [0.5] * 3, "std": [0.5] * 3},
            "config": TINY_OVERRIDE,
        },
        path,
    )
    return path


def test_class_token_layernorm_vit_from_birder_is_refused_as_another_architecture(tmp_path: Path) -> None:
    path = _birder_file_of("vit_b16", tmp_path / "vit_b16.pt")
    with pytest.raises(WeightsError, match="does not hold a ViT with register tokens and RMSNorm.*missing reg_tokens"):
        load_backbone(path)


def test_layernorm_register_vit_from_birder_is_refused_naming_its_extra_tensors(tmp_path: Path) -> None:
    # Same keys as ours plus LayerNorm biases: recognised as a ViT, refused on the mismatch.
    path = _birder_file_of("vit_reg4_b16", tmp_path / "vit_reg4_b16.pt")
    with pytest.raises(WeightsError, match=r"unexpected \d+ key\(s\) \(.*norm1\.bias.*LayerNorm"):
        load_backbone(path)


class _WritesMarker:
    """Unpickling this runs `Path.write_text(marker, ...)`: a stand-in for any code a hostile file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.write_text, (self.marker, "code ran"))


def test_pickle_with_arbitrary_object_is_refused_without_running_it(tiny_birder_file: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = resave(tiny_birder_file, tmp_path / "evil.pt", lambda o: o.update(payload=_WritesMarker(marker)))
    with pytest.raises(WeightsError, match="refused to load .*weights-only"):
        load_backbone(path)
    assert not marker.exists()
    # The payload is live: a plain unpickle does run it, so the check above is meaningful.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_input_not_multiple_of_patch_size_names_both_sizes(tiny_birder_file: Path) -> None:
    net, _ = load_backbone(tiny_birder_file)
    with pytest.raises(ValueError, match="height 100 and width 128"):
        net(torch.zeros(1, 3, 100, 128))
    with pytest.raises(ValueError, match="height 384 and width 600"):
        net.detection_features(torch.zeros(1, 3, 384, 600))
    with pytest.raises(WeightsError, match=r"size \(100, 100\) must be a multiple"):
        load_backbone(tiny_birder_file, size=100)


def test_unknown_registered_name_lists_the_registered_ones() -> None:
    with pytest.raises(WeightsError, match="neither an existing file nor a registered weights name") as err:
        load_backbone("vit_reg4_m16_rms_avg_no-such-tag")
    assert all(name in str(err.value) for name in REGISTERED_WEIGHTS)
    with pytest.raises(WeightsError, match="unknown weights 'nope'"):
        download_weights("nope")
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights("missing/file.pt")
    assert issubclass(WeightsError, InputError)


def test_read_birder_file_reports_size_classes_and_stats(make_birder_file: Any) -> None:
    stats = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    bf = read_birder_file(make_birder_file("x.pt", num_classes=7, image_size=(256, 320), rgb_stats=stats))
    assert (bf.input_size, bf.num_classes, bf.rgb_stats, bf.task) == ((256, 320), 7, stats, "image_classification")
    net, info = load_backbone(bf.path, size=(448, 448))
    assert (info.size, info.num_classes, net.image_size, net.training) == ((448, 448), 7, (256, 320), False)


# -- downloads -----------------------------------------------------------------------------------------------
NAME = "vit_reg4_m16_rms_avg_i-jepa-inat21"


def test_offline_download_names_url_and_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BIRDDET_HUB_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("BIRDDET_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as err:
        load_backbone(NAME)
    message = str(err.value)
    assert f"http://127.0.0.1:9/{NAME}/resolve/main/{NAME}.pt" in message
    assert str(tmp_path / "cache" / "weights" / f"{NAME}.pt") in message
    assert REGISTERED_WEIGHTS[NAME].sha256 in message
    assert list((tmp_path / "cache" / "weights").iterdir()) == []


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[str]]]:
    """A local HTTP server standing in for the hub: returns (served root, list of requested paths)."""
    root = tmp_path / "hub"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("BIRDDET_HUB_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("BIRDDET_CACHE", str(tmp_path / "cache"))
    try:
        yield root, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _serve(root: Path, src: Path) -> Path:
    served = root / REGISTERED_WEIGHTS[NAME].repo / "resolve" / "main" / f"{NAME}.pt"
    served.parent.mkdir(parents=True)
    served.write_bytes(src.read_bytes())
    return served


def test_download_is_verified_cached_and_not_fetched_again(
    hub: tuple[Path, list[str]], tiny_birder_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, requests = hub
    served = _serve(root, tiny_birder_file)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setitem(REGISTERED_WEIGHTS, NAME, dataclasses.replace(REGISTERED_WEIGHTS[NAME], sha256=digest))

    net, info = load_backbone(NAME)
    cached = tmp_path / "cache" / "weights" / f"{NAME}.pt"
    assert cached.read_bytes() == served.read_bytes()
    assert len(requests) == 1 and info.num_classes == 5
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no leftover partial file

    assert download_weights(NAME, progress=False) == cached
    assert len(requests) == 1


def test_download_with_wrong_hash_is_refused_and_leaves_nothing_in_cache(
    hub: tuple[Path, list[str]], tiny_birder_file: Path, tmp_path: Path
) -> None:
    root, requests = hub
    _serve(root, tiny_birder_file)  # registered sha256 is the real model's, so this file cannot match
    with pytest.raises(WeightsError, match=f"sha256 is [0-9a-f]{{64}}, expected {REGISTERED_WEIGHTS[NAME].sha256}"):
        download_weights(NAME, progress=False)
    assert len(requests) == 1
    assert list((tmp_path / "cache" / "weights").iterdir()) == []


# -- training switches: freezing, checkpointing, the position-embedding cache, dtypes -------------------------
def test_freeze_stops_patch_embedding_and_first_blocks_only(make_random_vit: Any) -> None:
    net = make_random_vit(preset="vit_reg4_small16_rms_avg").train()  # 4 blocks
    net.freeze(2)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    expected = {
        n
        for n, _ in net.named_parameters()
        if re.match(r"(conv_proj|reg_tokens|pos_embedding|encoder\.block\.[01]\.)", n)
    }
    assert frozen == expected and "encoder.block.0.attn.qkv.weight" in frozen
    net(torch.randn(1, 3, 64, 64)).sum().backward()
    assert all((p.grad is None) == (n in frozen) for n, p in net.named_parameters())
    with pytest.raises(ValueError, match="cannot freeze 5 blocks: the backbone has 4"):
        net.freeze(5)


def test_gradient_checkpointing_gives_same_gradients_and_recomputes_blocks(make_random_vit: Any) -> None:
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    grads = []
    calls = []
    for enable in (False, True):
        net = make_random_vit().train()
        net.set_grad_checkpointing(enable)
        count = [0]
        mlp = net.encoder.block[0].mlp
        mlp.forward = lambda t, c=count, f=mlp.forward: c.__setitem__(0, c[0] + 1) or f(t)  # hooks skip recompute
        net.detection_features(x)["neck"].square().mean().backward()
        grads.append(
            {n: p.grad for n, p in net.named_parameters() if n != "classifier.weight" and n != "classifier.bias"}
        )
        calls.append(count[0])
    assert calls == [1, 2]  # checkpointing re-runs the block (so its MLP) in the backward pass
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_resized_pos_embedding_is_cached_for_inference_and_refreshed_when_weights_change(
    make_random_vit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = make_random_vit()
    calls = []
    real_resize = vit_module.resize_pos_embedding
    monkeypatch.setattr(vit_module, "resize_pos_embedding", lambda *a, **k: calls.append(1) or real_resize(*a, **k))
    x = torch.randn(1, 3, 640, 640)
    with torch.no_grad():
        first = net.detection_features(x)["neck"]
        second = net.detection_features(x)["neck"]
        assert torch.equal(first, second) and len(calls) == 1
        net(torch.randn(1, 3, 384, 384))  # trained size: no resize at all
        assert len(calls) == 1
        net.pos_embedding.add_(0.1)  # e.g. new weights loaded in place: the cached copy is stale
        third = net.detection_features(x)["neck"]
    assert len(calls) == 2 and not torch.equal(third, first)
    net.double()  # a dtype change drops the cache too
    with torch.no_grad():
        net(x.double())
    assert len(calls) == 3


def test_pos_embedding_gets_gradients_at_a_new_size_in_training(make_random_vit: Any) -> None:
    net = make_random_vit().train()
    for _ in range(2):  # the second pass must not reuse a detached cached copy
        net.pos_embedding.grad = None
        net(torch.randn(1, 3, 640, 640)).sum().backward()
        grad = net.pos_embedding.grad
        assert grad is not None and grad[:, 4:].abs().sum() > 0 and grad[:, :4].abs().sum() > 0


def test_bf16_forward_runs_and_stays_close_to_fp32(tiny_birder_file: Path) -> None:
    net32, _ = load_backbone(tiny_birder_file)
    net16, _ = load_backbone(tiny_birder_file, dtype=torch.bfloat16)
    assert {p.dtype for p in net16.parameters()} == {torch.bfloat16} and not net16.training
    x = torch.randn(1, 3, 512, 768)
    with torch.no_grad():
        ref = net32.detection_features(x)["neck"]
        out = net16.detection_features(x.bfloat16())["neck"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = net32(x)
    assert out.dtype == torch.bfloat16 and auto.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))
    torch.testing.assert_close(auto.float(), net32(x).detach(), rtol=0.05, atol=0.05)
