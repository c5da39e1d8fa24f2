{{/* Names, labels and the operator's command line. */}}

{{- define "tierserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tierserve.fullname" -}}
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

{{- define "tierserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tierserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tierserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tierserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tierserve
{{- end -}}

{{- define "tierserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tierserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tierserve.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Cluster-wide operator: no watchNamespaces. */}}
{{- define "tierserve.clusterwide" -}}
{{- if not .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/* host:port in a URL; IPv6 literals need brackets. */}}
{{- define "tierserve.hostport" -}}
{{- $host := .host -}}
{{- if contains ":" $host -}}{{- $host = printf "[%s]" $host -}}{{- end -}}
{{- printf "%s:%d" $host (int .port) -}}
{{- end -}}

{{- define "tierserve.healthURL" -}}
{{- printf "http://%s/healthz" (include "tierserve.hostport" (dict "host" .Values.operator.bindAddress "port" .Values.operator.healthPort)) -}}
{{- end -}}

{{/*
Cross-field rules a JSON schema cannot explain well: fail with a message that says what to do.
*/}}
{{- define "tierserve.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.peering.enabled) -}}
{{- fail "replicas > 1 needs peering.enabled=true: Kopf has no leader election, so without peering every replica would reconcile every ModelTier (set replicas: 1, or peering.enabled: true for active/standby)" -}}
{{- end -}}
{{- if and .Values.rbac.namespaced (not .Values.watchNamespaces) -}}
{{- fail "rbac.namespaced=true needs watchNamespaces: the Roles are created in those namespaces and the operator watches only them (a cluster-wide operator needs a ClusterRole)" -}}
{{- end -}}
{{- end -}}

{{/*
The container's command and args: `tierserve operator` either way, so the reconcile handlers,
the threshold autoscaler and the metrics endpoint all run. Standalone (one replica):
`--standalone`. Peering: `--peering` and a random `--priority` drawn by each pod at start, so
exactly one (the highest) is active. The args are passed to the shell as "$@" so they stay
data, never shell code.
*/}}
{{- define "tierserve.command" -}}
{{- if .Values.peering.enabled }}
- /bin/sh
- -c
- exec tierserve operator --priority="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')" "$@"
- tierserve-operator
{{- else }}
- tierserve
- operator
{{- end }}
{{- end -}}

{{- define "tierserve.args" -}}
{{- if .Values.peering.enabled }}
- --peering={{ .Values.peering.name }}
{{- else }}
- --standalone
{{- end }}
- --metrics-port={{ .Values.operator.metricsPort }}
- --metrics-addr={{ .Values.operator.bindAddress }}
- --health={{ include "tierserve.healthURL" . }}
{{- if include "tierserve.clusterwide" . }}
- --all-namespaces
{{- else }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- end }}
{{- range .Values.operator.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding, admission policy): prefixed with
the release namespace, so releases of the same name in two namespaces never collide.
*/}}
{{- define "tierserve.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "tierserve.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
