"""Pipeline configuration: TOML -> attrs classes (:mod:`dsv.config.tables` for the core tables,
:mod:`dsv.config.converter` for the strict converter and plugin tables, :mod:`dsv.config.loading`
for files and overrides, :mod:`dsv.config.raw` for operations on the raw dict). Messages name the
file and the key path."""

from dsv.config.converter import CONVERTER, build, describe_value, plugin_problems, structure
from dsv.config.loading import LoadedPipeline, from_dict, load, load_text
from dsv.config.names import file_name_problems, is_plain_file_name
from dsv.config.plugin_options import (
    PLUGINS_TABLE,
    default_plugin_options,
    structure_plugin_options,
    unstructure_plugin_options,
)
from dsv.config.plugin_spec import PluginSpec
from dsv.config.raw import (
    LEGACY_RESUMABLE,
    RESUMABLE_KEYS,
    apply_overrides,
    changed_keys,
    config_hash,
    parse_override,
    split_variant,
    toml_inline,
)
from dsv.config.tables import (
    CORE_TABLES,
    DEFAULT_STAGES,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    PipelineConfig,
    RunConfig,
    SynthesisConfig,
    Target,
    check_logging,
    check_run,
    check_synthesis,
    check_targets,
    with_iterations,
)

__all__ = [
    "CONVERTER",
    "CORE_TABLES",
    "DEFAULT_STAGES",
    "LEGACY_RESUMABLE",
    "PLUGINS_TABLE",
    "RESUMABLE_KEYS",
    "split_variant",
    "toml_inline",
    "DataConfig",
    "LoadedPipeline",
    "LoggingConfig",
    "ModelConfig",
    "PipelineConfig",
    "PluginSpec",
    "RunConfig",
    "SynthesisConfig",
    "Target",
    "apply_overrides",
    "with_iterations",
    "build",
    "changed_keys",
    "check_logging",
    "check_run",
    "check_synthesis",
    "check_targets",
    "config_hash",
    "default_plugin_options",
    "describe_value",
    "file_name_problems",
    "from_dict",
    "is_plain_file_name",
    "load",
    "load_text",
    "parse_override",
    "plugin_problems",
    "structure",
    "structure_plugin_options",
    "unstructure_plugin_options",
]
