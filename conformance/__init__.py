"""Conformance: an implementation's state mapped to the model's, checked step for step.

Public API: :class:`~.adapter.KVManager` (the adapter protocol), :func:`~.adapter.resolve_factory`,
:class:`~.driver.Driver` and :func:`~.driver.abstract`, :class:`~.lockstep.Lockstep`,
:func:`~.check.run_check`, :func:`~.replay.replay_on_impl`, :func:`~.exhaustive.explore`.
Implementations never import the model; this package owns the mapping.
"""
