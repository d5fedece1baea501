"""The transform layer (docs/design.md, layer 2): the passes that rewrite a user's model.

- :mod:`~condattn.transform.convert`: ``convert()``, the numbered fx pass (SE-A / SE-R);
- :mod:`~condattn.transform.config`: ``ConvertConfig``, the one definition of its options;
- :mod:`~condattn.transform.tracing`, :mod:`~condattn.transform.placement`,
  :mod:`~condattn.transform.inplace`, :mod:`~condattn.transform.fxutils`: what the pass uses;
- :mod:`~condattn.transform.modes`: the converted model's one graph per mode (train / eval);
- :mod:`~condattn.transform.discovery`, :mod:`~condattn.transform.dropin`,
  :mod:`~condattn.transform.serialization`, :mod:`~condattn.transform.mappings`: the tools
  around it (``list_stages``, ``logits_only``, ``save``/``load``, the swap table).

This is the only package of condattn that touches torch.fx. Its public names are re-exported by
``condattn``.
"""
