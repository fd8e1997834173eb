{{/*
Names, labels and the pieces every Conveyor pod shares. Component templates call the
label helpers with (dict "ctx" $ "component" "worker").
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: <release>-<chart>, <release> when it already holds
the chart's name, or fullnameOverride. */}}
{{- define "conveyor.fullname" -}}
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

{{/* A component's object name: <fullname>-<component>. */}}
{{- define "conveyor.componentName" -}}
{{- printf "%s-%s" (include "conveyor.fullname" .ctx | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "conveyor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels selectors use: only the stable ones. */}}
{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels (.version: what runs, default the chart's appVersion). */}}
{{- define "conveyor.labels" -}}
helm.sh/chart: {{ include "conveyor.chart" .ctx }}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ .version | default .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: conveyor
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end -}}

{{/* A pod template's labels: the object labels plus podLabels. */}}
{{- define "conveyor.podLabels" -}}
{{ include "conveyor.labels" . }}
{{- with .ctx.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.configName" -}}
{{- printf "%s-config" (include "conveyor.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{/* The Conveyor image: repository:tag, pinned by digest when one is given. */}}
{{- define "conveyor.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* REDIS_URL: the chart's own Redis when redis.dev.enabled, else redis.url. */}}
{{- define "conveyor.redisUrl" -}}
{{- if .Values.redis.dev.enabled -}}
{{- printf "redis://%s:6379/0" (include "conveyor.componentName" (dict "ctx" . "component" "redis")) -}}
{{- else -}}
{{- required "redis.url is required unless redis.dev.enabled is true" .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{/* The backlog per worker pod the autoscaler aims at: autoscaling.targetPerWorker, or 80%
of the tasks a pod runs at once (conveyor.scaling.hpa.default_target). */}}
{{- define "conveyor.workerTarget" -}}
{{- $target := .Values.autoscaling.targetPerWorker -}}
{{- if $target -}}
{{- include "conveyor.int" $target -}}
{{- else -}}
{{- $slots := mul (int .Values.worker.processes) (int .Values.worker.concurrency) -}}
{{- max 1 (div (mul $slots 4) 5) -}}
{{- end -}}
{{- end -}}

{{/* A value as a decimal string (values arrive as floats). */}}
{{- define "conveyor.int" -}}
{{- printf "%d" (int .) -}}
{{- end -}}

{{/* The restricted Pod Security Standard, pod level, for user/group .uid. */}}
{{- define "conveyor.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The restricted Pod Security Standard, container level. */}}
{{- define "conveyor.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* The environment of every Conveyor container, as a YAML list: the Redis password from
its Secret, then extraEnv. The non-secret settings come from the ConfigMap (envFrom). */}}
{{- define "conveyor.env" -}}
{{- $env := list -}}
{{- if .Values.redis.auth.enabled -}}
{{- $ref := dict "name" .Values.redis.auth.existingSecret "key" .Values.redis.auth.existingSecretPasswordKey -}}
{{- $env = append $env (dict "name" "REDIS_PASSWORD" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- toYaml (concat $env .Values.extraEnv) -}}
{{- end -}}

{{/* The pod-level part every Conveyor pod shares: service account, pull secrets, security. */}}
{{- define "conveyor.podSpec" -}}
serviceAccountName: {{ include "conveyor.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "conveyor.podSecurityContext" (dict "uid" 10001) | nindent 2 }}
{{- end -}}

{{/* The pod template's annotations: a checksum of the ConfigMap (a change rolls the pods),
then podAnnotations. */}}
{{- define "conveyor.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The writable /tmp (an emptyDir) and its mount. */}}
{{- define "conveyor.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end -}}

{{- define "conveyor.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Node selector, tolerations, affinity and spread constraints of one component: .c its
values, .ctx and .component as for the labels. A spread constraint without a labelSelector
gets the component's pod selector (the constraint then counts its own pods). */}}
{{- define "conveyor.scheduling" -}}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.topologySpreadConstraints }}
{{- $selector := dict "matchLabels" (include "conveyor.selectorLabels" $ | fromYaml) }}
topologySpreadConstraints:
  {{- range . }}
  {{- $constraint := deepCopy . }}
  {{- if not (hasKey $constraint "labelSelector") }}
  {{- $_ := set $constraint "labelSelector" $selector }}
  {{- end }}
  {{- toYaml (list $constraint) | nindent 2 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The label selector of the pods of several components (.components) of this release. */}}
{{- define "conveyor.componentsSelector" -}}
matchLabels:
  app.kubernetes.io/name: {{ include "conveyor.name" .ctx }}
  app.kubernetes.io/instance: {{ .ctx.Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values:
      {{- toYaml .components | nindent 6 }}
{{- end -}}

{{/* An IntOrString value: a percentage string quoted, a number as an integer. */}}
{{- define "conveyor.intOrPercent" -}}
{{- if kindIs "string" . -}}
{{- quote . -}}
{{- else -}}
{{- include "conveyor.int" . -}}
{{- end -}}
{{- end -}}

{{/* Checks across values that the schema cannot express; configmap.yaml runs them. */}}
{{- define "conveyor.validate" -}}
{{- $d := .Values.dispatcher -}}
{{- if ge (int $d.preStopSleepSeconds) (int $d.terminationGracePeriodSeconds) -}}
{{- fail (printf "dispatcher.preStopSleepSeconds (%d) must be below dispatcher.terminationGracePeriodSeconds (%d)" (int $d.preStopSleepSeconds) (int $d.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- $a := .Values.autoscaling -}}
{{- if $a.enabled -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- if and .Values.worker.queues (not (has $a.queue .Values.worker.queues)) -}}
{{- fail (printf "autoscaling.queue %q is not one of worker.queues: the workers would be scaled on a queue they do not serve" $a.queue) -}}
{{- end -}}
{{- if and .Values.exporter.queues (not (has $a.queue .Values.exporter.queues)) -}}
{{- fail (printf "autoscaling.queue %q is not one of exporter.queues: its backlog would never be reported" $a.queue) -}}
{{- end -}}
{{- end -}}
{{- end -}}
