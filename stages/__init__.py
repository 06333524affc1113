"""The DVC stages: one thin module per kind of stage in dvc.yaml, each a `loraloop` subcommand that
reads its options, builds the workspace objects, calls the library (loraloop/) and reports."""
