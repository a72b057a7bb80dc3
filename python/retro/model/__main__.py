"""``python -m retro.model``: the presets' parameter counts next to the paper's."""

from retro.model.gpt import parameter_table

print(parameter_table())
