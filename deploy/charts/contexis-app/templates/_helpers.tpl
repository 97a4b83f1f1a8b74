{{/* Chart name, overridable. */}}
{{- define "contexis-app.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "contexis-app.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "contexis-app.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "contexis-app.selectorLabels" -}}
app.kubernetes.io/name: {{ include "contexis-app.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "contexis-app.labels" -}}
helm.sh/chart: {{ include "contexis-app.chart" . }}
{{ include "contexis-app.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The one Secret holding the HF_* variables: rendered by the chart, or filled by
the ExternalSecret when externalSecrets.enabled, never both.
*/}}
{{- define "contexis-app.secretName" -}}
{{- printf "%s-hf" (include "contexis-app.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
What the pods' checksum/secret annotation hashes: the rendered Secret, or the
ExternalSecret spec when the operator owns the Secret (its remote values are
not known at render time).
*/}}
{{- define "contexis-app.secretChecksum" -}}
{{- if .Values.externalSecrets.enabled }}
{{- toJson .Values.externalSecrets | sha256sum }}
{{- else }}
{{- include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* CMP_MEMORY_URL of an inline Secret: required, and a PostgreSQL URL. */}}
{{- define "contexis-app.memoryUrl" -}}
{{- $url := required "memory.url is required when memory.backend is postgresql (or use externalSecrets)" .Values.memory.url }}
{{- if not (or (hasPrefix "postgresql://" $url) (hasPrefix "postgres://" $url)) }}
{{- fail "memory.url must start with postgresql:// or postgres://" }}
{{- end }}
{{- $url }}
{{- end }}

{{- define "contexis-app.usageUrl" -}}
{{- $url := required "usage.url is required when usage.backend is postgresql (or use externalSecrets)" .Values.usage.url }}
{{- if not (or (hasPrefix "postgresql://" $url) (hasPrefix "postgres://" $url)) }}
{{- fail "usage.url must start with postgresql:// or postgres://" }}
{{- end }}
{{- $url }}
{{- end }}

{{/* Pod settings the memory Jobs share with the Deployment. */}}
{{- define "contexis-app.jobPod" -}}
restartPolicy: Never
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The usage files the values give: [{key, env, content}] (the ConfigMap's keys and the variables naming them). */}}
{{- define "contexis-app.usageFiles" -}}
{{- $files := list }}
{{- range $name, $spec := dict "budgets" (list "budgets.yaml" "CMP_BUDGETS") "prices" (list "prices.yaml" "CMP_MODEL_PRICES") "billTo" (list "bill-to.yaml" "CMP_BILL_TO_BY_TENANT") }}
{{- with index $.Values.usage $name }}
{{- $files = append $files (dict "key" (index $spec 0) "env" (index $spec 1) "content" .) }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}
