import pytest
import torch

from aelab.config import ModelConfig
from aelab.errors import ConfigError
from aelab.nn.models import INITS, build_model


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 17, 9)])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_models_map_images_to_logits_of_the_same_shape(kind, shape):
    config = ModelConfig(kind=kind, hidden_dims=(8, 4) if kind == "conv" else (16,), latent_dim=3)
    model = build_model(config, shape)
    images = torch.rand(5, *shape)
    codes = model.encode(images)
    assert codes.shape == (5, 3)
    logits = model.decode(codes)
    assert logits.shape == (5, *shape)
    assert torch.equal(model(images), logits)


def test_dense_layer_sizes_mirror_the_encoder():
    model = build_model(ModelConfig(hidden_dims=(100,), latent_dim=50), (1, 28, 28))
    encoder = [tuple(layer.weight.shape) for layer in model.encoder]
    decoder = [tuple(layer.weight.shape) for layer in model.decoder]
    assert encoder == [(100, 784), (50, 100)]
    assert decoder == [(100, 50), (784, 100)]


def test_tied_decoder_uses_the_transposed_encoder_weights():
    model = build_model(ModelConfig(hidden_dims=(6,), latent_dim=2, tied=True), (1, 3, 3))
    assert not hasattr(model, "decoder")
    (first, _), (second, _) = model.decoder_weights()
    assert first.data_ptr() == model.encoder[1].weight.data_ptr()
    assert torch.equal(second, model.encoder[0].weight.t())
    names = {name for name, _ in model.named_parameters()}
    assert names == {
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.1.weight",
        "encoder.1.bias",
        "decoder_biases.0",
        "decoder_biases.1",
    }


def test_output_activation_turns_logits_into_pixels():
    softmax = build_model(ModelConfig(output_activation="softmax", hidden_dims=(4,), latent_dim=2), (1, 4, 4))
    pixels = softmax.pixels(torch.randn(3, 1, 4, 4))
    assert torch.allclose(pixels.flatten(1).sum(1), torch.ones(3))
    relu = build_model(ModelConfig(output_activation="relu", hidden_dims=(4,), latent_dim=2), (1, 4, 4))
    logits = torch.randn(3, 1, 4, 4)
    output, from_logits = relu.loss_input(logits)
    assert not from_logits and torch.equal(output, logits.clamp_min(0))
    sigmoid = build_model(ModelConfig(hidden_dims=(4,), latent_dim=2), (1, 4, 4))
    assert sigmoid.loss_input(logits) == (logits, True)


def test_code_activation_overrides_hidden_activation():
    model = build_model(
        ModelConfig(activation="sigmoid", code_activation="linear", hidden_dims=(4,), latent_dim=3), (1, 4, 4)
    )
    codes = model.encode(torch.rand(50, 1, 4, 4) * 50)
    assert (codes < 0).any() or (codes > 1).any()


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ModelConfig(), (1, 28, 28), seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_model(ModelConfig(), (1, 28, 28), seed=7)
    c = build_model(ModelConfig(), (1, 28, 28), seed=8)
    assert torch.equal(a.encoder[0].weight, b.encoder[0].weight)
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)


def test_inits_differ_and_glorot_has_zero_bias():
    glorot = build_model(ModelConfig(init="glorot_uniform"), (1, 28, 28))
    default = build_model(ModelConfig(init="torch_default"), (1, 28, 28))
    assert torch.count_nonzero(glorot.encoder[0].bias) == 0
    assert torch.count_nonzero(default.encoder[0].bias) > 0
    limit = (6 / (784 + 100)) ** 0.5
    assert glorot.encoder[0].weight.abs().max() <= limit
    assert glorot.encoder[0].weight.abs().max() > 0.9 * limit
    assert set(INITS) >= {"glorot_uniform", "he_uniform", "torch_default"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ModelConfig(kind="rnn"), "unknown model 'rnn'; valid: dense, conv"),
        (ModelConfig(init="zeros"), "unknown init 'zeros'"),
        (ModelConfig(activation="softmax"), "unknown hidden activation 'softmax'"),
        (ModelConfig(output_activation="swish"), "unknown output activation 'swish'"),
        (ModelConfig(kind="conv", hidden_dims=(4,), tied=True), "tied applies to dense models only"),
    ],
)
def test_bad_model_names_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_model(config, (1, 8, 8))
