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

{{/* The service account the pods run as: serviceAccountName, or the release's full name when
the chart creates one without a name; empty for the namespace's default. */}}
{{- define "capgroup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "capgroup.fullname" .) .Values.serviceAccountName -}}
{{- else -}}
{{- .Values.serviceAccountName -}}
{{- end -}}
{{- end -}}

{{/* Keys of kafka.tls.existingSecret mounted as files, as a JSON list (empty without a
Secret). */}}
{{- define "capgroup.tlsKeys" -}}
{{- $tls := .Values.kafka.tls -}}
{{- $keys := list -}}
{{- if $tls.existingSecret -}}
{{- range (list $tls.caKey $tls.certKey $tls.keyKey $tls.keyPasswordKey) -}}
{{- if . -}}
{{- $keys = append $keys (toString .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $keys | uniq | toJson -}}
{{- end -}}

{{/* Fail on inconsistent security values, naming them (the consumer would refuse them at
start-up, in a crash loop). */}}
{{- define "capgroup.validateSecurity" -}}
{{- $k := .Values.kafka -}}
{{- $protocol := $k.securityProtocol | default "PLAINTEXT" | toString -}}
{{- if not (has $protocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) -}}
{{- fail (printf "kafka.securityProtocol (%s) must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL" $protocol) -}}
{{- end -}}
{{- $tls := has $protocol (list "SSL" "SASL_SSL") -}}
{{- $sasl := has $protocol (list "SASL_PLAINTEXT" "SASL_SSL") -}}
{{- if hasKey $k.sasl "password" -}}
{{- fail "kafka.sasl.password is not a value of this chart: put the password in a Secret and name it with kafka.sasl.existingSecret (and kafka.sasl.passwordKey)" -}}
{{- end -}}
{{- if and $k.tls.existingSecret (not $tls) -}}
{{- fail (printf "kafka.tls.existingSecret is set but kafka.securityProtocol is %s: TLS files need SSL or SASL_SSL" $protocol) -}}
{{- end -}}
{{- if and $k.tls.existingSecret (not (or $k.tls.caKey $k.tls.certKey)) -}}
{{- fail "kafka.tls.existingSecret is set but names no file: set kafka.tls.caKey and/or kafka.tls.certKey with kafka.tls.keyKey" -}}
{{- end -}}
{{- if and $k.tls.caKey (not $k.tls.existingSecret) (ne (toString $k.tls.caKey) "ca.crt") -}}
{{- fail "kafka.tls.caKey is a key of kafka.tls.existingSecret, which is not set" -}}
{{- end -}}
{{- if and (or $k.tls.certKey $k.tls.keyKey $k.tls.keyPasswordKey) (not $k.tls.existingSecret) -}}
{{- fail "kafka.tls.certKey, keyKey and keyPasswordKey are keys of kafka.tls.existingSecret, which is not set" -}}
{{- end -}}
{{- if ne (empty $k.tls.certKey) (empty $k.tls.keyKey) -}}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (the client certificate and its private key, for mTLS)" -}}
{{- end -}}
{{- if and $k.tls.keyPasswordKey (not $k.tls.keyKey) -}}
{{- fail "kafka.tls.keyPasswordKey needs kafka.tls.keyKey" -}}
{{- end -}}
{{- $mechanism := $k.sasl.mechanism | default "" | toString -}}
{{- if and $sasl (not $mechanism) -}}
{{- fail (printf "kafka.sasl.mechanism is required with kafka.securityProtocol %s (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)" $protocol) -}}
{{- end -}}
{{- if and $mechanism (not $sasl) -}}
{{- fail (printf "kafka.sasl.mechanism (%s) needs kafka.securityProtocol SASL_SSL or SASL_PLAINTEXT, not %s" $mechanism $protocol) -}}
{{- end -}}
{{- if and $mechanism (not (has $mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512" "OAUTHBEARER" "GSSAPI"))) -}}
{{- fail (printf "kafka.sasl.mechanism (%s) must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or GSSAPI" $mechanism) -}}
{{- end -}}
{{- if has $mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512") -}}
{{- if not $k.sasl.existingSecret -}}
{{- fail (printf "kafka.sasl.existingSecret is required with %s: the Secret holding the password (key kafka.sasl.passwordKey)" $mechanism) -}}
{{- end -}}
{{- if not (or $k.sasl.username $k.sasl.usernameKey) -}}
{{- fail (printf "kafka.sasl.username (or kafka.sasl.usernameKey) is required with %s" $mechanism) -}}
{{- end -}}
{{- end -}}
{{- if and $k.sasl.usernameKey (not $k.sasl.existingSecret) -}}
{{- fail "kafka.sasl.usernameKey is a key of kafka.sasl.existingSecret, which is not set" -}}
{{- end -}}
{{- if and $k.sasl.existingSecret (not $k.sasl.passwordKey) -}}
{{- fail "kafka.sasl.passwordKey must name the password's key in kafka.sasl.existingSecret" -}}
{{- end -}}
{{- if eq $mechanism "OAUTHBEARER" -}}
{{- if eq (empty $k.sasl.oauthTokenProvider) (empty $k.msk.region) -}}
{{- fail "OAUTHBEARER needs exactly one of kafka.sasl.oauthTokenProvider (package.module:callable) and kafka.msk.region (Amazon MSK IAM)" -}}
{{- end -}}
{{- else if or $k.sasl.oauthTokenProvider $k.msk.region -}}
{{- fail "kafka.sasl.oauthTokenProvider and kafka.msk.region need kafka.sasl.mechanism OAUTHBEARER (and kafka.securityProtocol SASL_SSL)" -}}
{{- end -}}
{{- if and $k.msk.roleArn (not $k.msk.region) -}}
{{- fail "kafka.msk.roleArn needs kafka.msk.region" -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- if and (has .name (list "CAPGROUP_SASL_PASSWORD" "CAPGROUP_SSL_KEY_PASSWORD")) (hasKey . "value") -}}
{{- fail (printf "extraEnv %s has a plain value: take it from a Secret with valueFrom.secretKeyRef (or use kafka.sasl.existingSecret)" .name) -}}
{{- end -}}
{{- end -}}
{{- range .Values.volumeClaimTemplates -}}
{{- if not (and (kindIs "map" .) .metadata .metadata.name) -}}
{{- fail "each of volumeClaimTemplates needs metadata.name (mount it with extraVolumeMounts under that name)" -}}
{{- end -}}
{{- end -}}
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
{{- include "capgroup.validateSecurity" . -}}
{{- include "capgroup.validateAutoscaling" . -}}
{{- end -}}

{{/* The group selector of the chart's PromQL: the group's own series only. */}}
{{- define "capgroup.groupSelector" -}}
{{- printf "group=%q" (toString .Values.group.id) -}}
{{- end -}}

{{/* The query KEDA follows: the number of members the group wants (every member exports the
same figure, so max() reads it once and takes the newest view if they briefly differ). */}}
{{- define "capgroup.replicasWantedQuery" -}}
{{- $keda := .Values.autoscaling.keda -}}
{{- if $keda.prometheus.query -}}
{{- $keda.prometheus.query -}}
{{- else -}}
{{- printf "max(capgroup_group_replicas_wanted{%s})" (include "capgroup.groupSelector" .) -}}
{{- end -}}
{{- end -}}

{{/* The group's total lag, each partition once (a partition moving between members may be
exported by both for a scrape). */}}
{{- define "capgroup.lagQuery" -}}
{{- printf "sum(max by (topic, partition) (capgroup_partition_lag_records{%s}))" (include "capgroup.groupSelector" .) -}}
{{- end -}}

{{/* Fail on autoscaling values that would scale the wrong way or thrash. */}}
{{- define "capgroup.validateAutoscaling" -}}
{{- $keda := .Values.autoscaling.keda -}}
{{- if $keda.enabled -}}
{{- if not $keda.prometheus.serverAddress -}}
{{- fail "autoscaling.keda.prometheus.serverAddress is required with autoscaling.keda.enabled: the Prometheus that scrapes the members" -}}
{{- end -}}
{{- if gt (int64 $keda.minReplicas) (int64 $keda.maxReplicas) -}}
{{- fail (printf "autoscaling.keda.minReplicas (%v) is above autoscaling.keda.maxReplicas (%v)" $keda.minReplicas $keda.maxReplicas) -}}
{{- end -}}
{{- if le (mul (int64 $keda.scaleDown.periodSeconds) 1000) (int64 .Values.group.sessionTimeoutMs) -}}
{{- fail (printf "autoscaling.keda.scaleDown.periodSeconds (%v) must be longer than group.sessionTimeoutMs (%v ms): a removed static member's partitions wait out the session timeout before they move, and the next removal must not start before that rebalance" $keda.scaleDown.periodSeconds .Values.group.sessionTimeoutMs) -}}
{{- end -}}
{{- if and (not (kindIs "invalid" .Values.drain.fromOrdinal)) (kindIs "invalid" $keda.pausedReplicas) -}}
{{- fail "drain.fromOrdinal with autoscaling.keda.enabled needs autoscaling.keda.pausedReplicas: pin the replica count while pods drain, or KEDA adds pods that drain at once or removes them before they are empty" -}}
{{- end -}}
{{- if not (kindIs "invalid" $keda.fallback.replicas) -}}
{{- if or (lt (int64 $keda.fallback.replicas) (int64 $keda.minReplicas)) (gt (int64 $keda.fallback.replicas) (int64 $keda.maxReplicas)) -}}
{{- fail (printf "autoscaling.keda.fallback.replicas (%v) must be within minReplicas..maxReplicas" $keda.fallback.replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
