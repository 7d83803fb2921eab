{{/* Names, labels and small shared snippets of the switchboard-operator chart. */}}

{{- define "switchboard-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name prefix of every object. Truncated to 52 so "<fullname>-crd-reader" and similar
suffixes still fit the 63-character limit of label values and DNS names.
*/}}
{{- define "switchboard-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "switchboard-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "switchboard-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchboard-operator.labels" -}}
helm.sh/chart: {{ include "switchboard-operator.chart" . }}
{{ include "switchboard-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "switchboard-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchboard-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchboard-operator.leaseName" -}}
{{- default (include "switchboard-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "switchboard-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks the values schema cannot express readably. */}}
{{- define "switchboard-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: two operators without a Lease would fight over every SignalingCluster" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled=true: the ServiceMonitor scrapes through that Service" -}}
{{- end -}}
{{- end -}}

{{/*
Removes every `x-kubernetes-validations` key from a parsed object, in place (dicts are
references), at any depth. Outputs nothing. For CRDs on Kubernetes < 1.25 (see crd.yaml).
*/}}
{{- define "switchboard-operator.stripCelRules" -}}
{{- if kindIs "map" . -}}
{{- $_ := unset . "x-kubernetes-validations" -}}
{{- range $_, $v := . -}}
{{- include "switchboard-operator.stripCelRules" $v -}}
{{- end -}}
{{- else if kindIs "slice" . -}}
{{- range . -}}
{{- include "switchboard-operator.stripCelRules" . -}}
{{- end -}}
{{- end -}}
{{- end -}}
