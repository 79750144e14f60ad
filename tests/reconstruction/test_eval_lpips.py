"""LPIPS: official state_dict key names load; a tiny random net behaves like a distance."""

from __future__ import annotations

import pytest
import torch

from geometry.errors import UserError
from reconstruction.eval.lpips import LPIPS, load_lpips

# The keys of the official package's ``lpips.LPIPS(net="alex").state_dict()`` (lpips 0.1.4),
# written out so that a rename on our side fails here.
OFFICIAL_ALEX_KEYS = [
    "scaling_layer.shift", "scaling_layer.scale",
    "net.slice1.0.weight", "net.slice1.0.bias", "net.slice2.3.weight", "net.slice2.3.bias",
    "net.slice3.6.weight", "net.slice3.6.bias", "net.slice4.8.weight", "net.slice4.8.bias",
    "net.slice5.10.weight", "net.slice5.10.bias",
    "lin0.model.1.weight", "lin1.model.1.weight", "lin2.model.1.weight",
    "lin3.model.1.weight", "lin4.model.1.weight",
    "lins.0.model.1.weight", "lins.1.model.1.weight", "lins.2.model.1.weight",
    "lins.3.model.1.weight", "lins.4.model.1.weight",
]
OFFICIAL_VGG_CONVS = [(1, 0), (1, 2), (2, 5), (2, 7), (3, 10), (3, 12), (3, 14), (4, 17),
                      (4, 19), (4, 21), (5, 24), (5, 26), (5, 28)]
TINY = (4, 6, 8, 8, 8)


def _random_state(model: LPIPS, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("scaling_layer"):
            state[key] = value.clone()
        elif key.startswith(("lin", "lins")):
            state[key] = torch.rand(value.shape, generator=gen)  # heads are non-negative
        else:
            state[key] = torch.randn(value.shape, generator=gen) * 0.1
    for k in range(5):  # the alias shares the head, as in the official module
        state[f"lins.{k}.model.1.weight"] = state[f"lin{k}.model.1.weight"]
    return state


def test_state_dict_keys_are_the_official_ones():
    assert list(LPIPS("alex").state_dict()) == OFFICIAL_ALEX_KEYS
    vgg_keys = set(LPIPS("vgg").state_dict())
    for s, i in OFFICIAL_VGG_CONVS:
        assert f"net.slice{s}.{i}.weight" in vgg_keys and f"net.slice{s}.{i}.bias" in vgg_keys
    assert sum(k.startswith("net.") for k in vgg_keys) == 2 * len(OFFICIAL_VGG_CONVS)


def test_full_official_state_dict_loads(tmp_path):
    state = _random_state(LPIPS("alex"), seed=0)
    path = tmp_path / "lpips_alex_full.pth"
    torch.save(state, path)
    model = load_lpips(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_official_heads_with_torchvision_trunk_load(tmp_path):
    reference = _random_state(LPIPS("alex"), seed=1)
    heads = {f"lin{k}.model.1.weight": reference[f"lin{k}.model.1.weight"] for k in range(5)}
    torch.save(heads, tmp_path / "alex.pth")  # what the official package ships
    trunk = {}
    for key, value in reference.items():
        if key.startswith("net."):
            _, _, index, param = key.split(".")
            trunk[f"features.{index}.{param}"] = value  # torchvision's alexnet names
    trunk["classifier.1.weight"] = torch.zeros(4, 4)  # ignored: not part of the trunk
    torch.save(trunk, tmp_path / "alexnet-owt.pth")
    with pytest.raises(UserError, match="--lpips-backbone"):
        load_lpips(tmp_path / "alex.pth")
    model = load_lpips(tmp_path / "alex.pth", tmp_path / "alexnet-owt.pth")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0)


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_lpips(tmp_path / "missing.pth")
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not an LPIPS"):
        load_lpips(tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="is not an LPIPS weights file"):
        load_lpips(tmp_path / "text.pth")
    (tmp_path / "text.safetensors").write_text("not a checkpoint either")
    with pytest.raises(UserError, match="text.safetensors is not an LPIPS weights file"):
        load_lpips(tmp_path / "text.safetensors")


class _NotWeights:
    pass


def test_unloadable_pickles_never_suggest_disabling_weights_only(tmp_path):
    """A .pth holding a pickled class: say it is not a weights file of the expected kind
    (naming the right file: the heads or the trunk), never torch's advice to re-run with
    weights_only=False, and in one sentence."""
    torch.save({"lin0.model.1.weight": _NotWeights()}, tmp_path / "objects.pth")
    with pytest.raises(UserError) as info:
        load_lpips(tmp_path / "objects.pth")
    message = str(info.value)
    assert "`weights_only`" not in message and "Re-running" not in message
    assert message.startswith(f"{tmp_path / 'objects.pth'} is not an LPIPS weights file")
    assert message.count(". ") == 0 and "\n" not in message
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1)
             for k, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(heads, tmp_path / "alex.pth")
    torch.save({"features.0.weight": _NotWeights()}, tmp_path / "alexnet.pth")
    with pytest.raises(UserError) as info:
        load_lpips(tmp_path / "alex.pth", tmp_path / "alexnet.pth")
    message = str(info.value)
    assert "`weights_only`" not in message and "LPIPS weights file" not in message
    assert message.startswith(f"{tmp_path / 'alexnet.pth'} is not torchvision's AlexNet")
    assert "--lpips-backbone" in message


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_tiny_random_net_is_a_distance(tmp_path, net):
    model = LPIPS(net, TINY)
    model.load_state_dict(_random_state(model, seed=2))
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    model = load_lpips(path)  # a smaller net of the same architecture loads too
    assert model.widths == TINY
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(64, 64, 3, generator=gen)
    noise = torch.randn(64, 64, 3, generator=gen)
    assert float(model(image, image)) == pytest.approx(0.0, abs=1e-9)
    distances = [float(model(image, (image + level * noise).clamp(0, 1)))
                 for level in (0.02, 0.08, 0.3)]
    assert 0 < distances[0] < distances[1] < distances[2]
    # Symmetric, batched like the inputs.
    other = (image + 0.1 * noise).clamp(0, 1)
    assert float(model(other, image)) == pytest.approx(float(model(image, other)), rel=1e-5)
    batch = model(torch.stack([image, other]), torch.stack([other, other]))
    assert batch.shape == (2,)
    assert float(batch[1]) == pytest.approx(0.0, abs=1e-9)
