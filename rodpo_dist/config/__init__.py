"""Typed run configuration: dataclass sections, YAML loading, overrides, validation, run identity."""

from rodpo_dist.config.identity import RUNTIME_ONLY, config_hash, differing_keys, flatten, identity_fields
from rodpo_dist.config.load import (CONFIG_FILE, ConfigError, apply_override, config_from_dict, load_config,
                                    parse_override, read_yaml, save_config, saved_config, saved_config_file)
from rodpo_dist.config.sections import (AlignConfig, ColumnsConfig, Config, DataConfig, EvalConfig, ItemsConfig,
                                        ModelConfig, MoEConfig, PoolConfig, PretrainConfig, RuntimeConfig, StageConfig,
                                        StudyConfig, SyntheticConfig)

__all__ = ["CONFIG_FILE", "AlignConfig", "ColumnsConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "ItemsConfig", "ModelConfig", "MoEConfig",
           "PoolConfig", "PretrainConfig", "RUNTIME_ONLY", "RuntimeConfig", "StageConfig", "StudyConfig", "SyntheticConfig",
           "apply_override", "config_from_dict", "config_hash", "differing_keys", "flatten", "identity_fields",
           "load_config", "parse_override", "read_yaml", "save_config", "saved_config", "saved_config_file"]
