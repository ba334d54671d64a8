"""The todo demo's model without ``@subscribable`` (``PlainTodo``): the baseline of the save() timings,
and the model of the Channels set-up (which has no Snorky)."""
