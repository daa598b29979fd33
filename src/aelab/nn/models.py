"""Autoencoder architectures. Decoders return logits; `pixels()` turns them into the images the
model shows: the output activation, or for a model trained with the continuous Bernoulli loss
the distribution's mean (`aelab.likelihoods.Likelihood.mean`), as evaluation and the report do.

Both models take images (B, C, H, W) as floats and return logits (B, V*C, H, W): V = 1 value
per pixel, the same shape as the images, for one-parameter likelihoods (bce, mse, mae, cb);
for a likelihood with more parameters V is its `decoded_parameters`, parameter-major (the
location's C channels first). A likelihood's shared parameters (one learned sigma) are model
parameters, `likelihood_parameters`, saved with the weights; `loss_input` appends them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from itertools import pairwise

import torch
from torch import nn

from aelab.config import ModelConfig
from aelab.errors import ConfigError
from aelab.likelihoods import get_likelihood
from aelab.nn.activations import get_activation


class Autoencoder(nn.Module):
    """What every aelab model offers: encode -> codes, decode -> logits, pixels(logits).

    `loss` is the training loss whose pixel mean `pixels` returns (a key of `aelab.LIKELIHOODS`), or
    None for the output activation alone; `build_model(..., loss=...)` sets it."""

    config: ModelConfig
    image_shape: tuple[int, int, int]
    loss: str | None = None
    output_values: int = 1  # values per pixel the decoder outputs (`Likelihood.decoded_parameters`)

    def _setup_activations(self, config: ModelConfig) -> None:
        self.config = config
        self.hidden_activation = get_activation(config.activation)
        self.code_activation = get_activation(config.code_activation or config.activation)
        self.output_activation = get_activation(config.output_activation, output=True)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def pixels(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model shows as an image for decoder logits (B, C, H, W): the pixel mean of
        its training loss (the cb mean for a cb-trained model, the same pixels evaluation and
        the report use), or the output activation when `loss` is None."""
        if self.loss is None:
            return self.output_activation(logits)
        output, from_logits = self.loss_input(logits)
        return get_likelihood(self.loss).mean(output, logits=from_logits)

    def loss_input(self, logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(output, from_logits) for `Likelihood.nll`: logits when the output is a sigmoid, so
        likelihood losses stay in log space; the output activation's values otherwise.

        For a likelihood with more than one parameter per pixel the output activation applies to
        the location's C channels only, and the shared parameters (`likelihood_parameters`, (S,))
        are appended, each as C channels: output (B, P*C, H, W)."""
        from_logits = self.config.output_activation == "sigmoid"
        shared = self._parameters.get("likelihood_parameters")
        if self.output_values == 1 and shared is None:
            return (logits, True) if from_logits else (self.output_activation(logits), False)
        channels = self.image_shape[0]
        location = logits[:, :channels]
        parts = [location if from_logits else self.output_activation(location), logits[:, channels:]]
        if shared is not None:
            groups = shared.repeat_interleave(channels).view(1, -1, *[1] * (logits.ndim - 2))
            parts.append(groups.expand(logits.shape[0], -1, *logits.shape[2:]).to(logits.dtype))
        return torch.cat(parts, dim=1), from_logits


class DenseAutoencoder(Autoencoder):
    """Fully connected: D -> hidden_dims... -> latent_dim -> reversed(hidden_dims)... -> V*D."""

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int], output_values: int = 1) -> None:
        super().__init__()
        self._setup_activations(config)
        self.image_shape = image_shape
        self.output_values = output_values
        dims = [math.prod(image_shape), *config.hidden_dims, config.latent_dim]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        decoder_dims = dims[::-1]
        decoder_dims[-1] *= output_values
        if config.tied and output_values != 1:
            raise ConfigError(f"model.tied cannot decode {output_values} values per pixel; drop model.tied")
        if config.tied:
            # The decoder reuses each encoder weight transposed; only its biases are its own.
            self.decoder_biases = nn.ParameterList(nn.Parameter(torch.zeros(d)) for d in decoder_dims[1:])
        else:
            self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(decoder_dims))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        hidden = images.flatten(1)  # (B, D)
        last = len(self.encoder) - 1
        for index, layer in enumerate(self.encoder):
            activation = self.code_activation if index == last else self.hidden_activation
            hidden = activation(layer(hidden))
        return hidden  # (B, latent_dim)

    def decoder_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight (out, in), bias (out,)) of each decoder layer, in order."""
        if self.config.tied:
            weights = [layer.weight.t() for layer in reversed(self.encoder)]
            return list(zip(weights, self.decoder_biases, strict=True))
        return [(layer.weight, layer.bias) for layer in self.decoder]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        hidden = codes
        layers = self.decoder_weights()
        for index, (weight, bias) in enumerate(layers):
            hidden = nn.functional.linear(hidden, weight, bias)
            if index < len(layers) - 1:
                hidden = self.hidden_activation(hidden)
        channels, height, width = self.image_shape
        return hidden.view(codes.shape[0], channels * self.output_values, height, width)  # logits (B, V*C, H, W)


def _conv_sizes(size: int, steps: int) -> list[int]:
    """Spatial size after each stride-2, kernel-3, padding-1 convolution."""
    sizes = [size]
    for _ in range(steps):
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes


class ConvAutoencoder(Autoencoder):
    """Stride-2 convolutions (one per entry of hidden_dims, as channel counts), a linear code,
    and transposed convolutions back to exactly the input's size."""

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int], output_values: int = 1) -> None:
        super().__init__()
        self._setup_activations(config)
        self.output_values = output_values
        if config.tied:
            raise ConfigError(
                template="model.tied applies to dense models only; drop {model.tied} or use {model.kind:dense}"
            )
        self.image_shape = image_shape
        self.encoder, self.bottom_shape = conv_encoder(config, image_shape)
        self.to_code = nn.Linear(math.prod(self.bottom_shape), config.latent_dim)
        self.from_code = nn.Linear(config.latent_dim, math.prod(self.bottom_shape))
        self.decoder = conv_decoder(config, image_shape, output_values)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        hidden = conv_encode(self, images)  # (B, C' * H' * W')
        return self.code_activation(self.to_code(hidden))  # (B, latent_dim)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return conv_decode(self, codes)  # logits (B, V*C, H, W)


# The convolutional stacks, shared by ConvAutoencoder and the conv VAE (`aelab.nn.variational`).
# Each model builds them in its own order (encoder, code layers, decoder), which fixes the
# order in which PyTorch's default initialisation draws their weights.


def conv_encoder(config: ModelConfig, image_shape: tuple[int, int, int]) -> tuple[nn.ModuleList, tuple[int, ...]]:
    """Stride-2 3x3 convolutions, one per entry of hidden_dims (channel counts), and the shape
    (C', H', W') of their output."""
    channels, height, width = image_shape
    steps = len(config.hidden_dims)
    chans = [channels, *config.hidden_dims]
    encoder = nn.ModuleList(nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1) for a, b in pairwise(chans))
    return encoder, (chans[-1], _conv_sizes(height, steps)[-1], _conv_sizes(width, steps)[-1])


def conv_decoder(config: ModelConfig, image_shape: tuple[int, int, int], output_values: int) -> nn.ModuleList:
    """Transposed convolutions back to exactly the input's height and width, with
    output_values * C channels out."""
    channels, height, width = image_shape
    steps = len(config.hidden_dims)
    heights, widths = _conv_sizes(height, steps), _conv_sizes(width, steps)
    chans = [channels, *config.hidden_dims]
    out_chans = [channels * output_values, *config.hidden_dims]
    decoder = nn.ModuleList()
    for index in range(steps, 0, -1):
        # Output size of a stride-2 transposed conv is 2 * in - 1 + output_padding.
        padding = (heights[index - 1] - (2 * heights[index] - 1), widths[index - 1] - (2 * widths[index] - 1))
        decoder.append(
            nn.ConvTranspose2d(
                chans[index], out_chans[index - 1], kernel_size=3, stride=2, padding=1, output_padding=padding
            )
        )
    return decoder


def conv_encode(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """`model.encoder`'s convolutions with its hidden activation, flattened: (B, C' * H' * W')."""
    hidden = images  # (B, C, H, W)
    for layer in model.encoder:
        hidden = model.hidden_activation(layer(hidden))
    return hidden.flatten(1)


def conv_decode(model: Autoencoder, codes: torch.Tensor) -> torch.Tensor:
    """`model.from_code`, then `model.decoder`'s transposed convolutions with its hidden
    activation between them: logits (B, V*C, H, W)."""
    hidden = model.hidden_activation(model.from_code(codes)).view(codes.shape[0], *model.bottom_shape)
    last = len(model.decoder) - 1
    for index, layer in enumerate(model.decoder):
        hidden = layer(hidden)
        if index < last:
            hidden = model.hidden_activation(hidden)
    return hidden


# A builder takes (config, image_shape) and, for likelihoods with more than one parameter per
# pixel, the keyword `output_values` (values per pixel its decoder outputs).
MODELS: dict[str, Callable[..., Autoencoder]] = {
    "dense": DenseAutoencoder,
    "conv": ConvAutoencoder,
}


def _glorot(uniform: bool) -> Callable[[torch.Tensor], None]:
    return (lambda w: nn.init.xavier_uniform_(w)) if uniform else (lambda w: nn.init.xavier_normal_(w))


def _he(uniform: bool) -> Callable[[torch.Tensor], None]:
    init = nn.init.kaiming_uniform_ if uniform else nn.init.kaiming_normal_
    return lambda w: init(w, nonlinearity="relu")


# Weight initialisers by name; biases start at zero (Keras's default) except for
# torch_default, which keeps PyTorch's own uniform(+-1/sqrt(fan_in)) weights and biases.
INITS: dict[str, Callable[[torch.Tensor], None] | None] = {
    "glorot_uniform": _glorot(uniform=True),
    "glorot_normal": _glorot(uniform=False),
    "he_uniform": _he(uniform=True),
    "he_normal": _he(uniform=False),
    "torch_default": None,
}


def check_model_fits_loss(config: ModelConfig, loss: str) -> None:
    """Raise ConfigError when a model of `config` cannot decode what the likelihood `loss` reads:
    more than one value per pixel from a builder without `output_values`, or from a tied
    decoder. Called before a run's folder is touched, and by `build_model`."""
    values = get_likelihood(loss).decoded_parameters
    if values == 1 or config.kind not in MODELS:
        return
    if "output_values" not in inspect.signature(MODELS[config.kind]).parameters:
        raise ConfigError(
            template="{model.kind:{kind}} outputs one value per pixel, and {train.loss:{loss}} needs {values}: "
            "give its builder an output_values keyword, or choose another loss",
            kind=config.kind,
            loss=loss,
            values=values,
        )
    if config.tied:
        raise ConfigError(
            template="{model.tied} reuses the encoder's first layer, which cannot decode {values} values per pixel "
            "({train.loss:{loss}}); drop {model.tied} or use a loss with one decoded parameter per pixel",
            loss=loss,
            values=values,
        )


def build_model(
    config: ModelConfig, image_shape: tuple[int, int, int], seed: int = 0, *, loss: str | None = None
) -> Autoencoder:
    """A freshly initialised model for images of `image_shape` (C, H, W).

    loss: the loss the model is (or was) trained with, a key of `aelab.LIKELIHOODS`; `pixels()`
        then returns that loss's pixel mean (the cb mean for "cb"). None: the output activation.
        It also shapes the model: the decoder outputs the likelihood's `decoded_parameters`
        values per pixel, and its shared parameters (a learned sigma) become the model's
        `likelihood_parameters`, starting at zero (raw values: sigma = 1).
    config.variational: a VAE of `config.kind` (`aelab.nn.variational`), its decoder giving the
        likelihood's decoded parameters per pixel in the same way.
    The seed drives initialisation through a private RNG scope, so building a model leaves the
    global torch RNG as it was."""
    likelihood = get_likelihood(loss) if loss is not None else None
    if config.kind not in MODELS:
        raise ConfigError(f"unknown model {config.kind!r}; valid: {', '.join(MODELS)}")
    if config.init not in INITS:
        raise ConfigError(f"unknown init {config.init!r}; valid: {', '.join(INITS)}")
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also (re)seed every GPU's generator,
        # which this scope does not restore.
        torch.random.default_generator.manual_seed(seed)
        values = likelihood.decoded_parameters if likelihood is not None else 1
        if config.variational:
            from aelab.nn.variational import build_variational  # it builds on Autoencoder, defined here

            model: Autoencoder = build_variational(config, image_shape, values)
        elif values == 1:
            model = MODELS[config.kind](config, image_shape)
        else:
            check_model_fits_loss(config, loss)  # type: ignore[arg-type]
            model = MODELS[config.kind](config, image_shape, output_values=values)
        init = INITS[config.init]
        if init is not None:
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    init(module.weight)
                    nn.init.zeros_(module.bias)
    if likelihood is not None and likelihood.shared_parameters:
        model.register_parameter("likelihood_parameters", nn.Parameter(torch.zeros(likelihood.shared_parameters)))
    model.loss = loss
    return model
