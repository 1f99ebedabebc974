{{/* ---------------------------------------------------------------- names */}}

{{- define "xsd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-xsd", or the release name alone when it already contains the chart name. */}}
{{- define "xsd.fullname" -}}
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

{{- define "xsd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "xsd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- labels */}}

{{/*
Selector labels of one component. Call with (dict "root" $ "component" "api") and, for a
GPU pool, "pool" "<name>".
*/}}
{{- define "xsd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xsd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .pool }}
xsd/pool: {{ . }}
{{- end }}
{{- end -}}

{{/* Every label of one component; same arguments as xsd.selectorLabels. */}}
{{- define "xsd.labels" -}}
{{ include "xsd.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: xsd
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* ---------------------------------------------------------------- image */}}

{{- define "xsd.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* ---------------------------------------------------------------- settings */}}

{{/*
A value as an environment string. Helm reads YAML and JSON numbers as floats, which would
print 1000000 as "1e+06": whole numbers are printed as integers.
*/}}
{{- define "xsd.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Where XSD_MODEL_PATH points: the weights directory inside the models volume. */}}
{{- define "xsd.modelPath" -}}
{{- printf "%s/%s" (.Values.models.mountPath | trimSuffix "/") .Values.models.directory -}}
{{- end -}}

{{- define "xsd.blocklistPath" -}}
/etc/xsd/blocklist.txt
{{- end -}}

{{/* ---------------------------------------------------------------- redis */}}

{{/* Name of the in-chart Redis's Service and Secret (see charts/redis). */}}
{{- define "xsd.redis.fullname" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret and key that hold the Redis password; empty when Redis has none. */}}
{{- define "xsd.redis.passwordSecret" -}}
{{- if .Values.redis.enabled -}}
{{- $auth := .Values.redis.auth -}}
{{- dict "name" ($auth.existingSecret | default (include "xsd.redis.fullname" .)) "key" $auth.existingSecretPasswordKey | toJson -}}
{{- else if .Values.externalRedis.existingSecret -}}
{{- dict "name" .Values.externalRedis.existingSecret "key" .Values.externalRedis.existingSecretPasswordKey | toJson -}}
{{- else if .Values.externalRedis.password -}}
{{- dict "name" (include "xsd.fullname" .) "key" .Values.externalRedis.existingSecretPasswordKey | toJson -}}
{{- else -}}
{{- dict | toJson -}}
{{- end -}}
{{- end -}}

{{/* The external Redis URL, parsed; refuses credentials inside the URL. */}}
{{- define "xsd.redis.external" -}}
{{- $url := required "externalRedis.url is required when redis.enabled is false" .Values.externalRedis.url -}}
{{- $parsed := urlParse $url -}}
{{- if not (has $parsed.scheme (list "redis" "rediss")) -}}
{{- fail (printf "externalRedis.url must start with redis:// or rediss://, not %q" $url) -}}
{{- end -}}
{{- if $parsed.userinfo -}}
{{- fail "externalRedis.url must not carry credentials: put the password in externalRedis.password or externalRedis.existingSecret" -}}
{{- end -}}
{{- $host := $parsed.host -}}
{{- if not (contains ":" $host) -}}
{{- $host = printf "%s:6379" $host -}}
{{- end -}}
{{- $db := trimPrefix "/" $parsed.path | default "0" -}}
{{- dict "scheme" $parsed.scheme "address" $host "fqdnAddress" $host "db" $db | toJson -}}
{{- end -}}

{{/*
The Redis in use: scheme, "address" (host:port as the xsd pods reach it), "fqdnAddress"
(as KEDA, in its own namespace, reaches it) and database index.
*/}}
{{- define "xsd.redis.endpoint" -}}
{{- if .Values.redis.enabled -}}
{{- $host := include "xsd.redis.fullname" . -}}
{{- $port := int .Values.redis.port -}}
{{- dict "scheme" "redis" "db" "0"
    "address" (printf "%s:%d" $host $port)
    "fqdnAddress" (printf "%s.%s.svc:%d" $host .Release.Namespace $port) | toJson -}}
{{- else -}}
{{- include "xsd.redis.external" . -}}
{{- end -}}
{{- end -}}

{{/*
XSD_REDIS_URL. The password is not written into the manifest: Kubernetes expands
$(REDIS_PASSWORD) from the env var defined just before it.
*/}}
{{- define "xsd.redis.url" -}}
{{- $endpoint := include "xsd.redis.endpoint" . | fromJson -}}
{{- $auth := "" -}}
{{- if (include "xsd.redis.passwordSecret" . | fromJson) -}}
{{- $auth = ":$(REDIS_PASSWORD)@" -}}
{{- end -}}
{{- printf "%s://%s%s/%s" $endpoint.scheme $auth $endpoint.address $endpoint.db -}}
{{- end -}}

{{/* ---------------------------------------------------------------- secrets */}}

{{/*
The Secret and key of one chart secret (.Values.secrets.apiKeyPepper, ...): an existing
Secret, or the chart's own; the key is the same in both. Call with (dict "root" $ "item" ...).
*/}}
{{- define "xsd.secretKeyRef" -}}
name: {{ .item.existingSecret | default (include "xsd.fullname" .root) }}
key: {{ .item.key }}
{{- end -}}

{{/* AWS credentials from a Secret, when given (with IRSA there are none). */}}
{{/*
Env vars of an access-key pair (secrets.s3 or secrets.s3Signing), from the chart's Secret
or the block's existingSecret; nothing when the block is empty.
Call with (dict "root" $ "block" <block> "idEnv" NAME "secretEnv" NAME).
*/}}
{{- define "xsd.keyPairEnv" -}}
{{- $block := .block -}}
{{- if or $block.existingSecret $block.accessKeyId -}}
{{- $name := $block.existingSecret | default (include "xsd.fullname" .root) -}}
- name: {{ .idEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $block.accessKeyIdKey }}
- name: {{ .secretEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $block.secretAccessKeyKey }}
{{- end -}}
{{- end -}}

{{/* AWS credentials for S3 and the weights init container (secrets.s3). */}}
{{- define "xsd.awsEnv" -}}
{{- include "xsd.keyPairEnv" (dict "root" . "block" .Values.secrets.s3 "idEnv" "AWS_ACCESS_KEY_ID" "secretEnv" "AWS_SECRET_ACCESS_KEY") -}}
{{- end -}}

{{/* ---------------------------------------------------------------- pods */}}

{{/*
The environment of every xsd container: the ConfigMap of XSD_* settings plus what comes
from Secrets. Order matters: REDIS_PASSWORD precedes the URL that expands it.
*/}}
{{- define "xsd.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "xsd.fullname" . }}-config
env:
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  # The root filesystem is read-only; libraries that cache under ~ write to /tmp.
  - name: HOME
    value: /tmp
  - name: PYTHONUNBUFFERED
    value: "1"
  {{- with (include "xsd.redis.passwordSecret" . | fromJson) }}
  - name: REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ .name }}
        key: {{ .key }}
  {{- end }}
  - name: XSD_REDIS_URL
    value: {{ include "xsd.redis.url" . | quote }}
  - name: XSD_API_KEY_PEPPER
    valueFrom:
      secretKeyRef:
        {{- include "xsd.secretKeyRef" (dict "root" . "item" .Values.secrets.apiKeyPepper) | nindent 8 }}
  {{- if eq .Values.config.storage "local" }}
  - name: XSD_URL_SIGNING_KEY
    valueFrom:
      secretKeyRef:
        {{- include "xsd.secretKeyRef" (dict "root" . "item" .Values.secrets.urlSigningKey) | nindent 8 }}
  {{- end }}
  {{- with include "xsd.awsEnv" . }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with include "xsd.keyPairEnv" (dict "root" . "block" .Values.secrets.s3Signing "idEnv" "XSD_S3_SIGNING_ACCESS_KEY_ID" "secretEnv" "XSD_S3_SIGNING_SECRET_ACCESS_KEY") }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* Volumes every xsd pod mounts; GPU pods add the models volume (xsd.modelsVolume). */}}
{{- define "xsd.volumes" -}}
- name: tmp
  emptyDir: {}
- name: data
  emptyDir: {}
{{- if eq .Values.config.storage "local" }}
- name: objects
  persistentVolumeClaim:
    claimName: {{ .Values.localStorage.existingClaim | default (printf "%s-objects" (include "xsd.fullname" .)) }}
{{- end }}
{{- if .Values.moderation.blocklist }}
- name: blocklist
  configMap:
    name: {{ include "xsd.fullname" . }}-blocklist
{{- end }}
{{- end -}}

{{- define "xsd.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ .Values.config.dataDir }}
{{- if eq .Values.config.storage "local" }}
# The local object store is <dataDir>/objects, shared by every pod.
- name: objects
  mountPath: {{ printf "%s/objects" (.Values.config.dataDir | trimSuffix "/") }}
{{- end }}
{{- if .Values.moderation.blocklist }}
- name: blocklist
  mountPath: {{ include "xsd.blocklistPath" . }}
  subPath: blocklist.txt
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Pod annotations that roll the pods when their configuration changes. The in-chart Redis
password lives in the subchart's Secret, so redis.auth is hashed too.
*/}}
{{- define "xsd.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ list (include (print .Template.BasePath "/secret.yaml") .) .Values.redis.auth | toJson | sha256sum }}
{{- end -}}

{{/* Pod-level settings shared by every xsd pod. */}}
{{- define "xsd.podCommon" -}}
serviceAccountName: {{ include "xsd.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* nodeSelector, affinity and tolerations of a component block, each only when set. */}}
{{- define "xsd.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- workloads */}}

{{/*
The Celery worker Deployments: the CPU worker and one per GPU pool, each pool merged over
gpuWorkers.defaults. Returned as JSON {"workers": [...]}; every template that makes
something per worker (Deployment, HPA, ScaledObject, PDB, metrics Service) ranges over it.
*/}}
{{- define "xsd.workers" -}}
{{- $fullname := include "xsd.fullname" . -}}
{{- $workers := list (dict
  "name" (printf "%s-cpu-worker" $fullname)
  "component" "cpu-worker"
  "pool" ""
  "gpu" false
  "node" "cpu"
  "queues" (list "cpu")
  "spec" .Values.cpuWorker) -}}
{{- range .Values.gpuWorkers.pools -}}
{{- $spec := mergeOverwrite (deepCopy $.Values.gpuWorkers.defaults) (deepCopy .) -}}
{{- $workers = append $workers (dict
  "name" (printf "%s-gpu-%s" $fullname .name | trunc 63 | trimSuffix "-")
  "component" "gpu-worker"
  "pool" .name
  "gpu" true
  "node" "gpu"
  "queues" .queues
  "spec" $spec) -}}
{{- end -}}
{{- dict "workers" $workers | toJson -}}
{{- end -}}
