"""Access to a transformers model's layer stack: decoder layers, feed-forward blocks,
the final norm and the attention implementation (what the passes and the logit lens
hook into)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["LayersMixin"]


class LayersMixin:
    """Decoder layers, feed-forward blocks, final norm, attention switch of ``model``."""

    model: torch.nn.Module
    name: str

    def decoder_layers(self) -> torch.nn.ModuleList | None:
        """The model's decoder layer stack (``model.layers`` of the usual layouts)."""
        base = getattr(self.model, "model", None)
        for owner in (base, getattr(base, "language_model", None)):
            layers = getattr(owner, "layers", None) if owner is not None else None
            if isinstance(layers, torch.nn.ModuleList) and len(layers) == self.n_layers:
                return layers
        return None

    def ffn_modules(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """Per decoder layer, (the layer, the module whose output is the feed-forward
        block's addition to the residual stream): ``post_feedforward_layernorm`` where
        the layer has one (Gemma 2/3), else ``mlp`` (Llama, Mistral, Qwen, ...).

        Raises:
            RuntimeError: the layers have neither (ReDeEP's parametric knowledge score
                cannot be read from this model).
        """
        layers = self.decoder_layers()
        found = []
        for layer in layers if layers is not None else []:
            delta = getattr(layer, "post_feedforward_layernorm", None)
            if not isinstance(delta, torch.nn.Module):
                delta = getattr(layer, "mlp", None)
            if not isinstance(delta, torch.nn.Module):
                break
            found.append((layer, delta))
        if layers is None or len(found) != len(layers):
            raise RuntimeError(
                f"model {self.name!r}: cannot find each decoder layer's feed-forward block "
                "(no 'mlp' / 'post_feedforward_layernorm' module)"
            )
        return found

    @contextmanager
    def capture_ffn(self, enabled: bool):
        """While active, collects per decoder layer ``[n, D]`` residual stream before
        its feed-forward block (layer output minus the block's addition) of the fed
        positions (batch row 0), in layer order."""
        if not enabled:
            yield None
            return
        outputs: dict[int, torch.Tensor] = {}
        deltas: dict[int, torch.Tensor] = {}
        handles = []

        def keep(store: dict[int, torch.Tensor], index: int):
            def hook(_module, _args, output):
                tensor = output[0] if isinstance(output, tuple) else output
                store[index] = tensor[0].detach()

            return hook

        for index, (layer, delta) in enumerate(self.ffn_modules()):
            handles.append(layer.register_forward_hook(keep(outputs, index)))
            handles.append(delta.register_forward_hook(keep(deltas, index)))
        captured: list[torch.Tensor] = []
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()
        captured.extend(
            (outputs[i] - deltas[i]).float() for i in range(len(outputs)) if i in deltas
        )

    def final_norm(self) -> torch.nn.Module:
        """The norm before the LM head (what the logit lens applies to each layer)."""
        base = getattr(self.model, "model", None)
        for owner in (base, getattr(base, "language_model", None), self.model):
            norm = getattr(owner, "norm", None) if owner is not None else None
            if isinstance(norm, torch.nn.Module):
                return norm
        raise RuntimeError(f"cannot find the final norm of model {self.name!r} for the logit lens")

    @contextmanager
    def attention_mode(self, implementation: str | None):
        """While active, the model runs with attention ``implementation`` (e.g.
        ``"eager"``, which returns attention weights); None changes nothing."""
        if implementation is None:
            yield
            return
        previous = self.model.config._attn_implementation
        if previous == implementation:
            yield
            return
        self.model.set_attn_implementation(implementation)
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)
