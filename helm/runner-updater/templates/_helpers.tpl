{{/* Name of the chart, overridable. */}}
{{- define "runner-updater.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "runner-updater.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "runner-updater.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "runner-updater.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runner-updater.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "runner-updater.labels" -}}
helm.sh/chart: {{ include "runner-updater.chart" . }}
{{ include "runner-updater.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "runner-updater.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "runner-updater.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "runner-updater.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the configuration file is mounted, and the file backend's directory. */}}
{{- define "runner-updater.configDir" -}}/etc/runner-updater{{- end -}}
{{- define "runner-updater.stateDir" -}}/var/lib/runner-updater{{- end -}}

{{/*
Checks what values.schema.json cannot express; fails the render with the reason.
*/}}
{{- define "runner-updater.validate" -}}
{{- $c := .Values.config -}}
{{- if not (has $c.channel $c.known_channels) -}}
{{- fail (printf "config.channel %q is not in config.known_channels %v" $c.channel $c.known_channels) -}}
{{- end -}}
{{- range $c.prerelease_channels -}}
{{- if not (has . $c.known_channels) -}}
{{- fail (printf "config.prerelease_channels: %q is not in config.known_channels %v" . $c.known_channels) -}}
{{- end -}}
{{- end -}}
{{- if lt (int $c.lease_secs) (mul 3 (int $c.active_poll_interval_secs)) -}}
{{- fail (printf "config.lease_secs (%d) must be at least three active poll intervals (%d)" (int $c.lease_secs) (mul 3 (int $c.active_poll_interval_secs))) -}}
{{- end -}}
{{- $names := list -}}
{{- range $c.runners -}}
{{- if has .name $names -}}
{{- fail (printf "config.runners: runner %q is listed twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if and (eq $c.state_store.backend "file") (gt (int .Values.replicaCount) 1) -}}
{{- fail "config.state_store.backend file keeps records in the pod: use replicaCount 1 (or the dynamodb or ssm backend)" -}}
{{- end -}}
{{- end -}}

{{/*
A TOML string: JSON's string escapes are a subset of TOML basic strings' (Go's encoder emits
\", \\, \n, \uXXXX …, never \/).
*/}}
{{- define "runner-updater.tomlString" -}}
{{- toJson (toString .) -}}
{{- end -}}

{{- define "runner-updater.tomlStrings" -}}
[{{- range $i, $s := . }}{{ if $i }}, {{ end }}{{ include "runner-updater.tomlString" $s }}{{ end -}}]
{{- end -}}

{{/* A health table's keys, as TOML key = value lines. */}}
{{- define "runner-updater.tomlHealth" -}}
fail_fast_tasks = {{ int .fail_fast_tasks }}
rollout_timeout_secs = {{ int64 .rollout_timeout_secs }}
soak_secs = {{ int64 .soak_secs }}
rollback_timeout_secs = {{ int64 .rollback_timeout_secs }}
{{- end -}}

{{/* The controller's configuration file (crates/config: unknown keys are refused). */}}
{{- define "runner-updater.configToml" -}}
{{- $c := .Values.config -}}
# Rendered by the runner-updater chart from its values (config.*).
prefix = {{ include "runner-updater.tomlString" $c.prefix }}
channel = {{ include "runner-updater.tomlString" $c.channel }}
known_channels = {{ include "runner-updater.tomlStrings" $c.known_channels }}
prerelease_channels = {{ include "runner-updater.tomlStrings" $c.prerelease_channels }}
settle_secs = {{ int64 $c.settle_secs }}
poll_interval_secs = {{ int64 $c.poll_interval_secs }}
active_poll_interval_secs = {{ int64 $c.active_poll_interval_secs }}
lease_secs = {{ int64 $c.lease_secs }}
consistency_window_secs = {{ int64 $c.consistency_window_secs }}
stack_refresh_secs = {{ int64 $c.stack_refresh_secs }}
max_concurrent_runners = {{ int64 $c.max_concurrent_runners }}
{{- if $c.update_window }}
update_window = {{ include "runner-updater.tomlString" $c.update_window }}
{{- end }}

[state_store]
backend = {{ include "runner-updater.tomlString" $c.state_store.backend }}
{{- if eq $c.state_store.backend "file" }}
path = {{ include "runner-updater.tomlString" (printf "%s/state" (include "runner-updater.stateDir" .)) }}
{{- end }}
{{- if $c.state_store.table }}
table = {{ include "runner-updater.tomlString" $c.state_store.table }}
{{- end }}

[health]
{{ include "runner-updater.tomlHealth" $c.health }}

[infrastructure]
change_set_timeout_secs = {{ int64 $c.infrastructure.change_set_timeout_secs }}
stack_update_timeout_secs = {{ int64 $c.infrastructure.stack_update_timeout_secs }}

[telemetry]
check_span_every_passes = {{ int64 $c.telemetry.check_span_every_passes }}

[rate_limits]
ssm_per_sec = {{ int64 $c.rate_limits.ssm_per_sec }}
ecs_per_sec = {{ int64 $c.rate_limits.ecs_per_sec }}
cloudformation_per_sec = {{ int64 $c.rate_limits.cloudformation_per_sec }}
{{- if $c.rate_limits.dynamodb_per_sec }}
dynamodb_per_sec = {{ int64 $c.rate_limits.dynamodb_per_sec }}
{{- end }}

[aws]
attempt_timeout_secs = {{ int64 $c.aws.attempt_timeout_secs }}
operation_timeout_secs = {{ int64 $c.aws.operation_timeout_secs }}
{{- if $c.aws.ssm_parameters_max }}
ssm_parameters_max = {{ int64 $c.aws.ssm_parameters_max }}
{{- end }}
{{- with $c.events }}
{{- if .queue_url }}

[events]
queue_url = {{ include "runner-updater.tomlString" .queue_url }}
backstop_interval_secs = {{ int64 .backstop_interval_secs }}
wait_secs = {{ int64 .wait_secs }}
{{- end }}
{{- end }}
{{- range $c.runners }}

[[runners]]
name = {{ include "runner-updater.tomlString" .name }}
cluster = {{ include "runner-updater.tomlString" .cluster }}
service = {{ include "runner-updater.tomlString" .service }}
{{- if .container }}
container = {{ include "runner-updater.tomlString" .container }}
{{- end }}
image_repository = {{ include "runner-updater.tomlString" .image_repository }}
{{- if .allowed_repositories }}
allowed_repositories = {{ include "runner-updater.tomlStrings" .allowed_repositories }}
{{- end }}
{{- if .stacks }}
stacks = {{ include "runner-updater.tomlStrings" .stacks }}
{{- end }}
{{- if .auto_execute }}
auto_execute = {{ include "runner-updater.tomlString" .auto_execute }}
{{- end }}
{{- if .channel }}
channel = {{ include "runner-updater.tomlString" .channel }}
{{- end }}
{{- if .update_window }}
update_window = {{ include "runner-updater.tomlString" .update_window }}
{{- end }}
{{- if .health }}

[runners.health]
{{ include "runner-updater.tomlHealth" (merge (deepCopy .health) (deepCopy $c.health)) }}
{{- end }}
{{- end }}
{{ end -}}
