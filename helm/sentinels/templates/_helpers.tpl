{{/* The release's base name: the release name when it contains "sentinels", else <release>-sentinels. */}}
{{- define "sentinels.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* app.kubernetes.io labels on every object; "component" is passed in as .component. */}}
{{- define "sentinels.labels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: sentinels
app.kubernetes.io/component: {{ .component }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sentinels.selectorLabels" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sentinels.jobsNamespace" -}}
{{- .Values.jobsNamespace | default .Release.Namespace -}}
{{- end -}}

{{/* "true" when the Knative objects of sentinels are rendered (knative.objects: auto/true/false). */}}
{{- define "sentinels.knativeObjects" -}}
{{- $mode := toString .Values.knative.objects -}}
{{- if eq $mode "true" -}}true
{{- else if and (eq $mode "auto") (.Capabilities.APIVersions.Has "serving.knative.dev/v1") (.Capabilities.APIVersions.Has "eventing.knative.dev/v1") (.Capabilities.APIVersions.Has "sources.knative.dev/v1") -}}true
{{- end -}}
{{- end -}}

{{- define "sentinels.knativeInstall" -}}
{{- $mode := toString .Values.knative.install -}}
{{- if index .Values "knative-operator" "enabled" -}}
{{- if eq $mode "true" -}}true
{{- else if and (eq $mode "auto") (.Capabilities.APIVersions.Has "operator.knative.dev/v1beta1") -}}true
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sentinels.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "sentinels.brokerUrl" -}}
{{- printf "%s/%s/%s" (trimSuffix "/" .Values.broker.ingress) .Release.Namespace .Values.broker.name -}}
{{- end -}}

{{/* NATS host of this release's nats dependency (its fullname rule), unless natsUrl is set. */}}
{{- define "sentinels.natsHost" -}}
{{- $n := index .Values "nats" -}}
{{- $name := "" -}}
{{- if $n.fullnameOverride -}}{{- $name = $n.fullnameOverride -}}
{{- else if contains "nats" .Release.Name -}}{{- $name = .Release.Name -}}
{{- else -}}{{- $name = printf "%s-nats" .Release.Name -}}
{{- end -}}
{{- printf "%s.%s.svc.cluster.local:4222" $name .Release.Namespace -}}
{{- end -}}

{{- define "sentinels.mlflowUri" -}}
{{- if .Values.mlflowTrackingUri -}}{{- .Values.mlflowTrackingUri -}}
{{- else if .Values.mlflow.enabled -}}{{- printf "http://%s-mlflow.%s.svc.cluster.local:80" .Release.Name .Release.Namespace -}}
{{- else -}}none
{{- end -}}
{{- end -}}

{{/* The function table: key -> (function name, Service suffix, signature). */}}
{{- define "sentinels.functions" -}}
submit: {fn: submit, name: submit, signature: http}
schedule: {fn: schedule, name: schedule, signature: cloudevent}
onJobEvent: {fn: on_job_event, name: on-job-event, signature: http}
alert: {fn: alert, name: alert, signature: http}
{{- end -}}

{{/* Secret-backed env of one function. Every reference is optional so that a missing Secret
reaches the function, whose start-up check names it (SENTINELS_EXPECT_SECRETS), instead of a
pod stuck in CreateContainerConfigError. */}}
{{- define "sentinels.secretEnv" -}}
{{- $s := .root.Values.secrets -}}
{{- $expect := list -}}
{{- if and (eq .key "submit") $s.tokens.name -}}
{{- $expect = append $expect (dict "secret" $s.tokens.name "key" $s.tokens.key "file" (printf "/var/run/secrets/sentinels/tokens/%s" $s.tokens.key)) }}
- {name: SENTINELS_TOKENS_FILE, value: {{ printf "/var/run/secrets/sentinels/tokens/%s" $s.tokens.key | quote }}}
{{- end }}
{{- if and (eq .key "alert") $s.slack.name }}
- name: SLACK_BOT_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $s.slack.name }}, key: {{ $s.slack.botTokenKey }}, optional: true}
- name: SLACK_WEBHOOK_URL
  valueFrom:
    secretKeyRef: {name: {{ $s.slack.name }}, key: {{ $s.slack.webhookKey }}, optional: true}
{{- $expect = append $expect (dict "secret" $s.slack.name "key" (printf "%s|%s" $s.slack.botTokenKey $s.slack.webhookKey) "env" "SLACK_BOT_TOKEN|SLACK_WEBHOOK_URL") -}}
{{- end }}
{{- if $s.mlflow.name }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $s.mlflow.name }}, key: username, optional: true}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $s.mlflow.name }}, key: password, optional: true}
{{- $expect = append $expect (dict "secret" $s.mlflow.name "key" "username" "env" "MLFLOW_TRACKING_USERNAME") -}}
{{- end }}
{{- if and .root.Values.natsAuth.enabled $s.nats.name }}
{{- $expect = append $expect (dict "secret" $s.nats.name "key" .function.name "env" "SENTINELS_NATS_PASSWORD") -}}
{{- end }}
- {name: SENTINELS_EXPECT_SECRETS, value: {{ $expect | toJson | quote }}}
{{- end -}}
