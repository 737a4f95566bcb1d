{{/*
Names, labels and the image, shared by every template.
*/}}

{{- define "sdb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
The full name every object name starts with. At most 52 characters, so that "<fullname>-activator"
still fits a Service name (63).
*/}}
{{- define "sdb.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sdb.activatorName" -}}
{{- printf "%s-activator" (include "sdb.fullname" .) }}
{{- end }}

{{- define "sdb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object: the recommended app.kubernetes.io set, plus commonLabels.
Call with (dict "root" $ "component" "operator").
*/}}
{{- define "sdb.labels" -}}
helm.sh/chart: {{ include "sdb.chart" .root }}
{{ include "sdb.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: serverless-db-operator
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The labels a component's pods are selected by; they never change across upgrades.
*/}}
{{- define "sdb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sdb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "sdb.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "sdb.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name must name an existing ServiceAccount when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sdb.activatorServiceAccountName" -}}
{{- if .Values.activator.serviceAccount.create }}
{{- default (include "sdb.activatorName" .) .Values.activator.serviceAccount.name }}
{{- else }}
{{- required "activator.serviceAccount.name must name an existing ServiceAccount when activator.serviceAccount.create is false" .Values.activator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image both components run: repository:tag, or repository@digest when a digest pins it.
*/}}
{{- define "sdb.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The restricted Pod Security Standard, for both components' pods and containers.
*/}}
{{- define "sdb.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "sdb.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Scheduling fields of a component's pod spec. Call with the component's values.
*/}}
{{- define "sdb.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/*
The ports the operator gives paused databases on the activator, one each. Fixed: the operator
assigns them from this range and the activator listens only within it (`sdb up` has no flag for it).
*/}}
{{- define "sdb.activatorPortRange" -}}
20000-29999
{{- end }}

{{/*
Egress both components need: DNS, the API server, and the databases' Postgres ports.
*/}}
{{- define "sdb.egressCommon" -}}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- to:
    {{- range .Values.networkPolicy.apiServer.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range .Values.networkPolicy.apiServer.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          app.kubernetes.io/managed-by: serverless-db-operator
  ports:
    {{- range .Values.networkPolicy.databasePorts }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
