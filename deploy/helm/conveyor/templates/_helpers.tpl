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

{{/* REDIS_URL: the chart's own Redis when redis.dev.enabled, else redis.url, with the
query parameters of redis.tls appended (after the URL's own, if it has some). */}}
{{- define "conveyor.redisUrl" -}}
{{- if .Values.redis.dev.enabled -}}
{{- printf "redis://%s:6379/0" (include "conveyor.componentName" (dict "ctx" . "component" "redis")) -}}
{{- else -}}
{{- $url := required "redis.url is required unless redis.dev.enabled is true" .Values.redis.url -}}
{{- $query := include "conveyor.redisTlsQuery" . -}}
{{- if not $query -}}
{{- $url -}}
{{- else if not (contains "?" $url) -}}
{{- printf "%s?%s" $url $query -}}
{{- else if or (hasSuffix "?" $url) (hasSuffix "&" $url) -}}
{{- printf "%s%s" $url $query -}}
{{- else -}}
{{- printf "%s&%s" $url $query -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The TLS parameters of REDIS_URL when redis.tls.enabled: ssl_ca_certs, ssl_certfile and
ssl_keyfile, each naming its key's file where the Secret is mounted (redis.tls.mountPath);
empty otherwise. The schema keeps paths and keys to characters a query needs no escaping for. */}}
{{- define "conveyor.redisTlsQuery" -}}
{{- $t := .Values.redis.tls -}}
{{- $params := list -}}
{{- if $t.enabled -}}
{{- range $param, $key := dict "ssl_ca_certs" $t.caKey "ssl_certfile" $t.certKey "ssl_keyfile" $t.keyKey -}}
{{- if $key -}}
{{- $params = append $params (printf "%s=%s/%s" $param $t.mountPath $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "&" $params -}}
{{- end -}}

{{/* The keys of redis.tls's Secret that are mounted, each once (certKey and keyKey may name
the same key: a PEM holding the certificate and its key). */}}
{{- define "conveyor.redisTlsKeys" -}}
{{- $t := .Values.redis.tls -}}
{{- toYaml (list $t.caKey $t.certKey $t.keyKey | compact | uniq) -}}
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

{{/* The volumes of every Conveyor pod: the writable /tmp (an emptyDir), the Secret of
redis.tls when enabled (only its named keys, mode 0440: root's and group 10001's, the pods'
fsGroup, so the non-root user reads them and nobody writes), then extraVolumes. */}}
{{- define "conveyor.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- $t := .Values.redis.tls }}
{{- if $t.enabled }}
- name: redis-tls
  secret:
    secretName: {{ $t.existingSecret | quote }}
    defaultMode: 288 {{- /* 0440 */}}
    items:
      {{- range include "conveyor.redisTlsKeys" . | fromYamlArray }}
      - key: {{ . | quote }}
        path: {{ . | quote }}
      {{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Their mounts in every Conveyor container: /tmp, the TLS files read-only at
redis.tls.mountPath, then extraVolumeMounts. */}}
{{- define "conveyor.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.redis.tls.enabled }}
- name: redis-tls
  mountPath: {{ .Values.redis.tls.mountPath | quote }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
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
{{- include "conveyor.validateRedisTls" . -}}
{{- include "conveyor.validateVolumes" . -}}
{{- end -}}

{{/* redis.tls against redis.url: TLS files only make sense on a TLS connection. */}}
{{- define "conveyor.validateRedisTls" -}}
{{- $t := .Values.redis.tls -}}
{{- if $t.enabled -}}
{{- if .Values.redis.dev.enabled -}}
{{- fail "redis.tls.enabled: the dev Redis (redis.dev.enabled) does not serve TLS; turn one of them off" -}}
{{- end -}}
{{- $url := .Values.redis.url -}}
{{- if not (regexMatch "^rediss(\\+sentinel|\\+cluster)?://" $url) -}}
{{- fail (printf "redis.tls.enabled needs a TLS URL (rediss://, rediss+sentinel:// or rediss+cluster://), but redis.url is %q" $url) -}}
{{- end -}}
{{- if not (or $t.caKey $t.certKey) -}}
{{- fail "redis.tls.enabled with neither redis.tls.caKey nor redis.tls.certKey mounts nothing: set one, or turn redis.tls off (a rediss:// URL alone uses the image's CAs)" -}}
{{- end -}}
{{- if and $t.keyKey (not $t.certKey) -}}
{{- fail (printf "redis.tls.keyKey (%q) is set without redis.tls.certKey: a client key needs its certificate" $t.keyKey) -}}
{{- end -}}
{{- range $param, $key := dict "ssl_ca_certs" $t.caKey "ssl_certfile" $t.certKey "ssl_keyfile" $t.keyKey -}}
{{- if and $key (regexMatch (printf "[?&]%s=" $param) $url) -}}
{{- fail (printf "redis.url already sets %s, which redis.tls adds (%s/%s): remove it from the URL" $param $t.mountPath $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* extraVolumes and extraVolumeMounts: unique names, mounts of declared volumes, and no
mount path used twice in a container (the API server would refuse the Deployments). */}}
{{- define "conveyor.validateVolumes" -}}
{{- $names := list -}}
{{- range .Values.extraVolumes -}}
{{- if has .name $names -}}
{{- fail (printf "extraVolumes: the name %q is used twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- $paths := list "/tmp" -}}
{{- if .Values.redis.tls.enabled -}}
{{- $paths = append $paths .Values.redis.tls.mountPath -}}
{{- end -}}
{{- range .Values.extraVolumeMounts -}}
{{- if not (has .name $names) -}}
{{- fail (printf "extraVolumeMounts: %q mounts the volume %q, which is not one of extraVolumes" .mountPath .name) -}}
{{- end -}}
{{- if has (trimSuffix "/" .mountPath) $paths -}}
{{- fail (printf "extraVolumeMounts: the mount path %q is already used (by /tmp, redis.tls.mountPath or another mount)" .mountPath) -}}
{{- end -}}
{{- $paths = append $paths (trimSuffix "/" .mountPath) -}}
{{- end -}}
{{- end -}}
