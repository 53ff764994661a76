{{/* Chart name, fullname and labels. */}}
{{- define "capgroup.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "capgroup.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "capgroup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capgroup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "capgroup.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "capgroup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
Seconds the shutdown needs before SIGKILL: CAPGROUP_SHUTDOWN_TIMEOUT_MS, then up to 5 s for
the membership engine to leave the group (ENGINE_STOP_GRACE_SECONDS in the runtime), then
5 s for the process to exit.
*/}}
{{- define "capgroup.shutdownNeedsMs" -}}
{{- add (int64 .Values.shutdown.timeoutMs) 10000 -}}
{{- end -}}

{{- define "capgroup.terminationGracePeriodSeconds" -}}
{{- $needs := include "capgroup.shutdownNeedsMs" . | int64 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- div (add $needs 999) 1000 -}}
{{- else -}}
{{- int64 .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Fail the render with a message naming the value, before anything reaches a cluster. */}}
{{- define "capgroup.validate" -}}
{{- $v := .Values -}}
{{- if not $v.app.target -}}
{{- fail "app.target is required: the BatchingConsumer subclass to run, as package.module:ClassName" -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$" $v.app.target) -}}
{{- fail (printf "app.target %q is not package.module:ClassName" $v.app.target) -}}
{{- end -}}
{{- if not $v.image.repository -}}
{{- fail "image.repository is required: an image containing capgroup and your consumer module" -}}
{{- end -}}
{{- if not $v.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers is required (CAPGROUP_BOOTSTRAP_SERVERS)" -}}
{{- end -}}
{{- if not $v.group.id -}}
{{- fail "group.id is required (CAPGROUP_GROUP_ID)" -}}
{{- end -}}
{{- if not $v.group.topics -}}
{{- fail "group.topics needs at least one topic (CAPGROUP_TOPICS)" -}}
{{- end -}}
{{- if gt (mul (int64 $v.group.heartbeatIntervalMs) 3) (int64 $v.group.sessionTimeoutMs) -}}
{{- fail (printf "group.heartbeatIntervalMs (%v) must be at most a third of group.sessionTimeoutMs (%v)" $v.group.heartbeatIntervalMs $v.group.sessionTimeoutMs) -}}
{{- end -}}
{{- $limits := default dict $v.resources.limits -}}
{{- if and (not $limits.memory) (kindIs "invalid" $v.capacity.memoryBudgetBytes) -}}
{{- fail "resources.limits.memory is required: the buffer budget is capacity.memoryBudgetFraction of it (or set capacity.memoryBudgetBytes); without a limit the downward API reports the node's memory" -}}
{{- end -}}
{{- if or (le (float64 $v.capacity.memoryBudgetFraction) 0.0) (gt (float64 $v.capacity.memoryBudgetFraction) 1.0) -}}
{{- fail (printf "capacity.memoryBudgetFraction (%v) must be in (0, 1]" $v.capacity.memoryBudgetFraction) -}}
{{- end -}}
{{- if or (lt (int64 $v.http.port) 1) (gt (int64 $v.http.port) 65535) -}}
{{- fail (printf "http.port (%v) must be in 1..65535: the probes need the operations server" $v.http.port) -}}
{{- end -}}
{{- if lt (int64 $v.shutdown.timeoutMs) 0 -}}
{{- fail "shutdown.timeoutMs must be >= 0" -}}
{{- end -}}
{{- $needs := include "capgroup.shutdownNeedsMs" . | int64 -}}
{{- $grace := include "capgroup.terminationGracePeriodSeconds" . | int64 -}}
{{- if gt $needs (mul $grace 1000) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) is too short for shutdown.timeoutMs (%v): the shutdown needs %d ms (timeout + 5 s to leave the group + 5 s to exit) before SIGKILL. Raise terminationGracePeriodSeconds to at least %d, lower shutdown.timeoutMs to at most %d, or leave terminationGracePeriodSeconds null to compute it" $grace $v.shutdown.timeoutMs $needs (div (add $needs 999) 1000) (sub (mul $grace 1000) 10000)) -}}
{{- end -}}
{{- if not (kindIs "invalid" $v.drain.fromOrdinal) -}}
{{- if lt (int64 $v.drain.fromOrdinal) 0 -}}
{{- fail "drain.fromOrdinal must be a pod ordinal (>= 0) or null" -}}
{{- end -}}
{{- end -}}
{{- end -}}
