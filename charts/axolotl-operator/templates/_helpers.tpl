{{- define "axolotl-operator.name" -}}axolotl-operator{{- end }}

{{- define "axolotl-operator.fullname" -}}
{{- if contains "axolotl-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-axolotl-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "axolotl-operator.labels" -}}
app.kubernetes.io/name: {{ include "axolotl-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "axolotl-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "axolotl-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "axolotl-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "axolotl-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{- define "axolotl-operator.progressUrl" -}}
{{- if .Values.progress.url -}}
{{- .Values.progress.url -}}
{{- else -}}
{{- printf "https://%s-progress.%s.svc:%v/progress" (include "axolotl-operator.fullname" .) .Release.Namespace .Values.progress.port -}}
{{- end -}}
{{- end }}

{{- /* "true" when the progress endpoint serves HTTPS: its CA and certificate live in <fullname>-progress-tls. */ -}}
{{- define "axolotl-operator.progressTls" -}}
{{- if and .Values.progress.port (hasPrefix "https://" (include "axolotl-operator.progressUrl" .)) -}}true{{- end -}}
{{- end }}
