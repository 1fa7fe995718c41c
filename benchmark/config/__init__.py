"""The configuration layer: what every command composes, checks and reads its settings
through, and what no command takes from another.

- `schema`: every key's type and range (`SCHEMA`), `cadence`, `parse_value`;
- `methods`: a method's options, checked from its constructor, and `instantiate_method`;
- `checks`: `check_config`, the joint rules, `validate` (all checks of one configuration),
  `check_output_dir`;
- `compose`: hydra's composition (`compose_all`), the sweep's product (`expand`), the
  `key=value` options of a command (`pop_options`, `parse_options`);
- `execution`: `Execution`, how a run executes.
"""

from benchmark.config.checks import (
    backbone_multiple,
    check_config,
    check_joint,
    check_output_dir,
    normalise,
    validate,
)
from benchmark.config.compose import (
    CONF_DIR,
    GROUPS,
    choices,
    compose_all,
    expand,
    parse_options,
    pop_options,
    sweep_methods,
)
from benchmark.config.execution import Execution
from benchmark.config.methods import check_method, instantiate_method, method_keys
from benchmark.config.schema import (
    NAME,
    SCHEMA,
    Bool,
    Cadence,
    Either,
    Float,
    Int,
    Ints,
    Key,
    Str,
    Tasks,
    Texts,
    cadence,
    leaf_keys,
    parse_value,
)

__all__ = [
    "CONF_DIR", "GROUPS", "NAME", "SCHEMA", "Bool", "Cadence", "Either", "Execution", "Float",
    "Int", "Ints", "Key", "Str", "Tasks", "Texts", "backbone_multiple", "cadence",
    "check_config", "check_joint", "check_method", "check_output_dir", "choices",
    "compose_all", "expand", "instantiate_method", "leaf_keys", "method_keys", "normalise",
    "parse_options", "parse_value", "pop_options", "sweep_methods", "validate",
]
