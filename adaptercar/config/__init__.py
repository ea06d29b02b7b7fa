"""Configuration: adaptercar.yaml and mapping files → typed, immutable objects + problems.

`load_all(path)` is what `adaptercar check` and the runtime call; the pieces are public so
semantic checks can add problems at the right lines (`SourceMap.problem(path, message)`).
"""

from adaptercar.config.expand import ExpansionError, expand_env, expand_string
from adaptercar.config.load import (
    LoadResult,
    MappingResult,
    Project,
    check_config,
    check_mappings,
    display_path,
    expand_mapping_paths,
    load_all,
    load_config,
    load_mapping,
    validation_context,
)
from adaptercar.config.mapping_schema import (
    GRPC_CODES,
    MappingFile,
    MethodMapping,
    parse_duration,
)
from adaptercar.config.problems import Problem, render_path
from adaptercar.config.schema import Backend, Config, redacted_dict, split_host_port
from adaptercar.config.yamlsource import SourceMap, YamlDocument, load_yaml, parse_yaml

__all__ = [
    "GRPC_CODES",
    "Backend",
    "Config",
    "ExpansionError",
    "LoadResult",
    "MappingFile",
    "MappingResult",
    "MethodMapping",
    "Problem",
    "Project",
    "SourceMap",
    "YamlDocument",
    "check_config",
    "check_mappings",
    "display_path",
    "expand_env",
    "expand_mapping_paths",
    "expand_string",
    "load_all",
    "load_config",
    "load_mapping",
    "load_yaml",
    "parse_duration",
    "parse_yaml",
    "redacted_dict",
    "render_path",
    "split_host_port",
    "validation_context",
]
