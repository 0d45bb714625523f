"""`kvplan import SOURCE -o FILE`: write a spec YAML from a model's own files.

SOURCE is what `estimate` accepts besides catalog names: a config.json, a model
folder, a .gguf file, or a hub id cached locally. The YAML is written atomically
(a temporary file in the same folder, then a rename) and an existing file is
kept unless --force is given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from kvplan.errors import InputError

if TYPE_CHECKING:
    from kvplan.model.spec import ModelSpec

# Fields always written even at their default, so the file reads on its own.
_ALWAYS = ("torch_dtype",)


def _scalar(value: Any) -> str:
    """One YAML scalar in flow form (strings quoted only when YAML needs it)."""
    import yaml  # here, not at module level: `kvplan estimate` never loads the import command's needs

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def spec_yaml(spec: "ModelSpec") -> str:
    """The spec as YAML in ModelSpec field order; defaults left out, flow-style lists."""
    import yaml

    from kvplan.model.spec import ModelSpec

    lines = [f"# written by `kvplan import` from {spec.source}"]
    for name, info in ModelSpec.model_fields.items():
        value = getattr(spec, name)
        if value is None or (name not in _ALWAYS and value == info.default):
            continue
        if isinstance(value, tuple):
            value = [dict(v) if isinstance(v, dict) else v for v in value]
        if hasattr(value, "model_dump"):  # file_weight_bytes: one flow mapping
            value = value.model_dump()
        if name in ("source", "notes") and isinstance(value, str) and len(value) > 60:
            folded = yaml.safe_dump({name: value}, default_flow_style=False, width=88, sort_keys=False)
            lines.append(folded.rstrip("\n"))
            continue
        line = f"{name}: {_scalar(value)}"
        if name == "num_parameters":
            notes = spec.notes or ""
            if "num_parameters estimated from config.json" in notes:
                line += "  # estimated from config.json (see notes)"
            elif "metadata.total_parameters" in notes:
                line += "  # model.safetensors.index.json total_parameters"
            else:
                line += "  # counted from the weights' headers"
        if name == "file_weight_bytes":
            line += "  # summed from the tensors' sizes in the file headers"
        lines.append(line)
    return "\n".join(lines) + "\n"


def check_destination(path: Path, source: str, force: bool) -> None:
    """Refuse, before any work, a destination that is a folder, the model's own files, or (without
    `force`) any existing file; see kvplan.cli.outputs."""
    from kvplan.cli.outputs import SPEC_YAML, check_output, model_inputs

    if path.is_dir():
        raise InputError(f"-o {path}: is a folder; give a file name such as {path / 'model.yaml'}")
    check_output(path, "-o", SPEC_YAML, inputs=model_inputs(source, "imported"), force=force)


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_(
        source: Annotated[
            str,
            typer.Argument(
                help="A config.json, a model folder, a .gguf file, or a hub id org/name in the local "
                "Hugging Face cache.",
                show_default=False,
            ),
        ],
        output: Annotated[
            str,
            typer.Option("--output", "-o", help="Spec YAML to write (e.g. model_specs/NAME.yaml); '-' prints it.", show_default=False),
        ],
        name: Annotated[
            Optional[str], typer.Option("--name", help="Spec name (default: from the repository, folder or file name).")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite the output file if it exists.")] = False,
    ) -> None:
        """Write a spec YAML for a model from its own files, offline (nothing in them is run)."""
        from kvplan.atomic import write_text_atomically
        from kvplan.sources.catalog import load_spec_file
        from kvplan.sources.resolve import spec_from_source

        path = None if output == "-" else Path(output).expanduser()
        if path is not None:
            check_destination(path, source, force)
        spec = spec_from_source(source, name=name)
        text = spec_yaml(spec)
        if path is None:
            sys.stdout.write(text)
            return
        write_text_atomically(path, text, "-o")
        again = load_spec_file(path)  # the file must read back as the same spec
        if again != spec:
            raise InputError(f"{path}: written, but it does not read back as the same spec (please report this)")
        sys.stderr.write(
            f"wrote {path}: {spec.name}, {spec.num_hidden_layers} layers, "
            f"{'unknown' if spec.num_parameters is None else format(spec.num_parameters, ',')} parameters\n"
        )
