"""A hand-written training step for the dense VAE (`aelab.nn.variational.DenseVAE`).

`DenseVAEStep` is `aelab.train.fast.DenseStep` for one dense VAE: the same forward and backward
written out (matrix products into preallocated gradients, activations in place where their
gradient needs only their output, the likelihood's fused head overwriting the logits with its
gradient), and between encoder and decoder the reparameterisation and the KL term by hand.

It minimises exactly `VariationalStep`'s objective (`aelab.nn.variational.training_objective`):

    mean over the batch of recon  +  weight * sum over dimensions of max(KL_d, free_bits)

where recon is `reconstruction_nats` (the likelihood's NLL summed over pixels, with its density
constant), KL_d the batch mean of dimension d's closed-form KL against N(0, 1), and the
clamp only when free_bits > 0 (a clamped dimension gets no gradient). The codes come from
`sample_codes` with the run's sample generator, the same call on the same shapes in the same
order as `elbo_terms`, so the two steps follow one trajectory to float rounding.

Shapes: x (B, D) images flattened; h (B, H) a layer's output; mean, log_variance, codes, noise
(B, L); logits (B, D).
"""

from __future__ import annotations

import torch

from aelab.likelihoods import Head, get_likelihood
from aelab.nn.activations import ACTIVATIONS, Activation
from aelab.nn.variational import DenseVAE, sample_codes
from aelab.train.fast import _autograd_head, fast_step_problem


class _Layer:
    """A linear layer's parameters, the gradients this step writes for them, and the activation
    after it (None: none, for the mean, log-variance and logits)."""

    def __init__(self, linear: torch.nn.Linear, activation: str | None) -> None:
        self.linear = linear
        # Views of the parameters' storage outside autograd: the optimizer's in-place updates show.
        self.weight, self.bias = linear.weight.detach(), linear.bias.detach()  # (out, in), (out,)
        self.weight_grad = torch.zeros_like(self.weight)
        self.bias_grad = torch.zeros_like(self.bias)
        self.activation: Activation | None = ACTIVATIONS[activation] if activation is not None else None

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-activation, output): one tensor, activated in place, when the activation's
        gradient needs only its output."""
        z = torch.addmm(self.bias, inputs, self.weight.t())
        record = self.activation
        if record is None:
            return z, z
        if record.in_place is not None:
            record.in_place(z)
            return z, z
        return z, record.function(z)

    def activation_gradient(self, grad: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """dL/dz from dL/da (overwritten where the record has an in-place form)."""
        record = self.activation
        if record is None:
            return grad
        if record.gradient_in_place is not None:
            record.gradient_in_place(grad, a)
            return grad
        return record.gradient(grad, a, z)  # type: ignore[misc]

    def backward(self, grad: torch.Tensor, inputs: torch.Tensor, scale: float = 1) -> None:
        """Write scale * dL/dW and scale * dL/db for dL/dz = grad (B, out)."""
        self.weight_grad.addmm_(grad.t(), inputs, beta=0, alpha=scale)
        torch.sum(grad, 0, out=self.bias_grad)
        if scale != 1:
            self.bias_grad.mul_(scale)

    def parameters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.linear.weight, self.weight_grad), (self.linear.bias, self.bias_grad)]


def _forward(layers: list[_Layer], inputs: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """Run `layers` in order: (the last output, each layer's (input, pre-activation, output))."""
    saved = []
    hidden = inputs
    for layer in layers:
        z, a = layer.forward(hidden)
        saved.append((hidden, z, a))
        hidden = a
    return hidden, saved


class DenseVAEStep:
    """Forward and backward of `VariationalStep`'s objective for one `DenseVAE`.

    model: the VAE; a sigmoid output takes the likelihood's `fused_head`, any other output
        activation or a likelihood without one `aelab.train.fast._autograd_head` (autograd on the
        last elementwise part alone). Likelihoods with more than one parameter per pixel are
        refused (`fast_step_problem`).

    `gradients(x, generator, weight, free_bits)` writes every parameter's gradient into the
    buffers `grads` lists (pair each with its parameter's `.grad`) and returns the objective
    (1,) in nats per image, without synchronising.
    """

    def __init__(self, model: DenseVAE, loss: str) -> None:
        problem = fast_step_problem(model)
        if problem is None and not isinstance(model, DenseVAE):
            problem = "it is not a dense VAE"
        if problem is not None:
            raise ValueError(f"DenseVAEStep cannot train this model: {problem}")
        activation = model.config.activation
        self.encoder = [_Layer(layer, activation) for layer in model.encoder]
        self.to_mean = _Layer(model.to_mean, None)
        self.to_log_variance = _Layer(model.to_log_variance, None)
        last = len(model.decoder) - 1
        self.decoder = [_Layer(layer, activation if i < last else None) for i, layer in enumerate(model.decoder)]
        likelihood = get_likelihood(loss)
        fused = likelihood.fused_head if model.config.output_activation == "sigmoid" else None
        self.head: Head = fused if fused is not None else _autograd_head(model, loss)
        self.density_constant = likelihood.density_constant
        layers = [*self.encoder, self.to_mean, self.to_log_variance, *self.decoder]
        # (parameter, gradient buffer), in the model's own parameter order (its optimizer's)
        by_parameter = {id(p): (p, g) for layer in layers for p, g in layer.parameters()}
        self.grads = [by_parameter[id(p)] for p in model.parameters()]

    def gradients(self, x: torch.Tensor, generator: torch.Generator, weight: float, free_bits: float) -> torch.Tensor:
        """x (B, D) images, inputs and targets; `generator` draws the codes; `weight` is the KL
        term's (`kl_weight`). Returns the objective (1,), nats per image."""
        batch, pixels = x.shape
        # Forward. The mean and log-variance are the model's own two layers.
        hidden, encoder_saved = _forward(self.encoder, x)
        mean, _ = self.to_mean.forward(hidden)
        log_variance, _ = self.to_log_variance.forward(hidden)
        codes, noise = sample_codes(mean, log_variance, generator)  # as `elbo_terms` draws them
        hidden, decoder_saved = _forward(self.decoder, codes)
        logits = hidden.view(1, batch, pixels)
        # The head gives the mean over images and pixels of the NLL and overwrites the logits with
        # its gradient; recon is summed over pixels: `pixels` times both.
        recon_mean = (self.head(logits, x.view(1, batch, pixels)) + self.density_constant) * pixels
        # KL(q || N(0, 1)) per dimension, as `aelab.losses.gaussian_kl` computes it: (B, L)
        variance = log_variance.exp()
        kl = variance.add(mean.square()).sub_(1.0).sub_(log_variance).mul_(0.5)
        per_dimension = kl.mean(dim=0)  # (L,)
        # d objective / d KL_bd: weight / B, or 0 for a dimension held at its free bits
        coefficient: torch.Tensor | float = weight / batch
        if free_bits > 0:
            coefficient = (per_dimension >= free_bits).to(kl.dtype).mul_(weight / batch)  # clamp_min's gradient
            per_dimension = per_dimension.clamp_min(free_bits)
        objective = recon_mean + weight * per_dimension.sum()

        # Backward through the decoder. Its gradients are linear in the head's, so recon's factor
        # `pixels` is applied where they are written (the products' alpha, the biases) and at the
        # codes, never in a pass over a (B, D) or (B, H) tensor.
        grad = logits.view(batch, pixels)
        for index in range(len(self.decoder) - 1, -1, -1):
            layer = self.decoder[index]
            layer.backward(grad, decoder_saved[index][0], scale=pixels)
            grad = torch.mm(grad, layer.weight)  # (B, in), over `pixels`
            if index > 0:
                _, z_below, a_below = decoder_saved[index - 1]
                grad = self.decoder[index - 1].activation_gradient(grad, z_below, a_below)
        grad.mul_(pixels)  # d objective / d codes (B, L)
        # codes = mean + exp(log_variance / 2) * noise; the KL adds coefficient * mean and
        # coefficient * (variance - 1) / 2.
        std = log_variance.mul(0.5).exp_()
        log_variance_grad = grad.mul(noise).mul_(std).mul_(0.5)
        mean_grad = grad
        if isinstance(coefficient, float):
            mean_grad = mean_grad.add_(mean, alpha=coefficient)
            log_variance_grad.add_(variance.sub_(1.0), alpha=0.5 * coefficient)
        else:
            mean_grad = mean_grad.addcmul_(mean, coefficient)
            log_variance_grad.addcmul_(variance.sub_(1.0), coefficient, value=0.5)
        top = encoder_saved[-1][2] if self.encoder else x  # the input of the mean and log-variance layers
        self.to_mean.backward(mean_grad, top)
        self.to_log_variance.backward(log_variance_grad, top)
        if not self.encoder:
            return objective
        grad = torch.mm(mean_grad, self.to_mean.weight).addmm_(log_variance_grad, self.to_log_variance.weight)
        for index in range(len(self.encoder) - 1, -1, -1):
            layer = self.encoder[index]
            inputs, z, a = encoder_saved[index]
            grad = layer.activation_gradient(grad, z, a)
            layer.backward(grad, inputs)
            if index > 0:  # the images' own gradient is never needed
                grad = torch.mm(grad, layer.weight)
        return objective


__all__ = ["DenseVAEStep"]
