"""Splits `helm template` output into one file per resource, validates the custom resources
that the Kubernetes schemas do not know, and extracts the controller's TOML configuration.

    manifests.py RENDERED.yaml OUT_DIR CONFIG.toml --expect-kinds Kind,Kind,...

Writes OUT_DIR/NN-kind-name.yaml for every resource, OUT_DIR/core-files.txt (the files for
kubernetes-validate: every resource of a built-in API) and CONFIG.toml (the ConfigMap's
config.toml). Custom resources are validated here against a schema of this repository
(CUSTOM_SCHEMAS); a custom resource without one is an error, so none passes unchecked.
Exits non-zero on any failure. Runs in the tools venv (PyYAML and jsonschema come with
kubernetes-validate); tomllib is Python 3.11's.
"""

import argparse
import json
import pathlib
import sys
import tomllib

import jsonschema
import yaml

HERE = pathlib.Path(__file__).resolve().parent

# apiVersion/kind of custom resources -> the schema they are validated against.
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): HERE / "prometheusrule.schema.json",
}

# Groups of the built-in APIs (kubernetes-validate has their schemas).
BUILT_IN_GROUPS = {"", "apps", "policy", "networking.k8s.io", "batch", "autoscaling", "rbac.authorization.k8s.io"}


class UniqueKeyLoader(yaml.SafeLoader):
    """A loader that refuses duplicate keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


CHART_FILES = HERE.parent.parent / "helm" / "runner-updater" / "files"


def same_as_the_files(kind: str, name: str, document: dict) -> int:
    """The PrometheusRule carries files/alerts.yaml's groups and the dashboard ConfigMap
    files/dashboard.json, unchanged by the templates. Returns the failures (0 or 1)."""
    if kind == "PrometheusRule":
        rendered = document.get("spec", {}).get("groups")
        expected = yaml.safe_load((CHART_FILES / "alerts.yaml").read_text())["groups"]
        what = "files/alerts.yaml's groups"
    elif kind == "ConfigMap" and "runner-updater.json" in document.get("data", {}):
        try:
            rendered = json.loads(document["data"]["runner-updater.json"])
        except json.JSONDecodeError as error:
            print(f"FAIL {kind}/{name}: the dashboard is not JSON: {error}")
            return 1
        expected = json.loads((CHART_FILES / "dashboard.json").read_text())
        what = "files/dashboard.json"
    else:
        return 0
    if rendered != expected:
        print(f"FAIL {kind}/{name}: differs from {what}")
        return 1
    print(f"ok   {kind}/{name}: the same as {what}")
    return 0


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("out_dir")
    parser.add_argument("config_toml")
    parser.add_argument("--expect-kinds", required=True)
    args = parser.parse_args()

    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = pathlib.Path(args.rendered).read_text()
    try:
        documents = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d]
    except yaml.YAMLError as error:
        print(f"FAIL {args.rendered}: not valid YAML: {error}")
        return 1

    failures = 0
    core_files = []
    kinds = []
    config_text = None
    for index, document in enumerate(documents):
        api_version = document.get("apiVersion", "")
        kind = document.get("kind", "")
        name = document.get("metadata", {}).get("name", "")
        kinds.append(kind)
        path = out / f"{index:02d}-{kind.lower()}-{name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        if (api_version, kind) in CUSTOM_SCHEMAS:
            schema_path = CUSTOM_SCHEMAS[(api_version, kind)]
            schema = json.loads(schema_path.read_text())
            errors = sorted(
                jsonschema.Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.path)
            )
            for error in errors:
                location = ".".join(str(p) for p in error.path)
                print(f"FAIL {path}: {kind}/{name}: {location}: {error.message}")
            failures += len(errors)
            if not errors:
                print(
                    f"ok   {path}: {kind}/{name} against {schema_path.relative_to(HERE.parent.parent)}"
                    " (a custom resource: not in the Kubernetes schemas)"
                )
        elif group_of(api_version) in BUILT_IN_GROUPS:
            core_files.append(str(path))
        else:
            print(f"FAIL {path}: {api_version} {kind} is a custom resource without a schema here")
            failures += 1
        if kind == "ConfigMap" and "config.toml" in document.get("data", {}):
            config_text = document["data"]["config.toml"]
        failures += same_as_the_files(kind, name, document)

    (out / "core-files.txt").write_text("".join(f"{f}\n" for f in core_files))

    expected = sorted(k for k in args.expect_kinds.split(",") if k)
    if sorted(kinds) != expected:
        print(f"FAIL {args.rendered}: kinds {sorted(kinds)}, expected {expected}")
        failures += 1

    if config_text is None:
        print(f"FAIL {args.rendered}: no ConfigMap with config.toml")
        return 1
    pathlib.Path(args.config_toml).write_text(config_text)
    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as error:
        print(f"FAIL {args.config_toml}: not valid TOML: {error}")
        return 1
    runners = [r["name"] for r in config.get("runners", [])]
    print(
        f"ok   {args.config_toml}: valid TOML, prefix {config['prefix']}, "
        f"runners {runners if runners else 'none'}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
