{{/*
Names are tied to the release: objects of release R are called "R-<name>", except for a release
named like the chart ("ipjms"), whose objects keep the short names the Kustomize base uses. Two
releases in one namespace therefore never share an object, a selector or a policy.
*/}}
{{- define "ipjms.prefix" -}}
{{- if ne .Release.Name .Chart.Name }}{{ .Release.Name }}-{{ end }}
{{- end }}

{{/* Labels every object carries; `instance` groups a service with its own database. */}}
{{- define "ipjms.labels" -}}
app.kubernetes.io/name: ipjms
app.kubernetes.io/part-of: ipjms
app.kubernetes.io/instance: {{ .root.Release.Name }}
ipjms.io/release: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
ipjms.io/instance: {{ .instance }}
{{- end }}

{{- define "ipjms.selector" -}}
ipjms.io/release: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
ipjms.io/instance: {{ .instance }}
{{- end }}

{{/* Organisations in the coordinator's directory: the authority and every node's org. Each has a
ConfigMap directory-<org> (public certificates + directory.toml, from deploy/k8s/gen-secrets.sh). */}}
{{- define "ipjms.directoryOrgs" -}}
{{- $orgs := list .Values.coordinator.org }}
{{- range .Values.nodes }}{{ $orgs = append $orgs .org }}{{ end }}
{{- toYaml $orgs }}
{{- end }}

{{/* The image: by digest when one is given (a release build), else by tag. */}}
{{- define "ipjms.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}
{{- end }}

{{- define "ipjms.scheme" -}}
{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{- define "ipjms.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .uid }}
  runAsGroup: {{ .uid }}
  fsGroup: {{ .uid }}
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "ipjms.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}

{{/*
Probes of an IPJMS HTTP service: startup and readiness ask /healthz (which checks the database:
a pod whose database is down leaves the Service's endpoints), liveness asks /livez, which does
not — a database outage never restarts the services.
*/}}
{{- define "ipjms.httpProbes" -}}
{{- $scheme := include "ipjms.scheme" . | upper }}
startupProbe:
  httpGet: {path: /healthz, port: http, scheme: {{ $scheme }}}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  httpGet: {path: /healthz, port: http, scheme: {{ $scheme }}}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet: {path: /livez, port: http, scheme: {{ $scheme }}}
  periodSeconds: 20
  timeoutSeconds: 5
{{- end }}

{{/* Environment every IPJMS service container gets: HTTPS with its organisation's certificate,
and the regional CA as the only trust anchor of its HTTPS clients. */}}
{{- define "ipjms.tlsEnv" -}}
IPJMS_HTTP_TLS: {{ if .Values.tls.enabled }}"1"{{ else }}"0"{{ end }}
SSL_CERT_FILE: /run/ipjms/ca/ca.cert.pem
{{- end }}

{{/* The database URL of an instance: CloudNativePG's read-write Service with TLS verified
against the cluster's CA (verify-full: chain and host name), or the local demo's StatefulSet. */}}
{{- define "ipjms.dbUrl" -}}
{{- $p := include "ipjms.prefix" .root -}}
{{- if eq .root.Values.postgres.mode "cloudnativepg" -}}
postgresql://ipjms@{{ $p }}db-{{ .name }}-rw:5432/ipjms?sslmode=verify-full&sslrootcert=/run/ipjms/db-ca/ca.crt
{{- else -}}
postgresql://ipjms@{{ $p }}db-{{ .name }}:5432/ipjms
{{- end }}
{{- end }}

{{/* Volumes + mounts a database client needs: its password (the `password` key of the
credentials Secret, read per connection) and, with CloudNativePG, the cluster's CA. */}}
{{- define "ipjms.dbVolumes" -}}
{{- $p := include "ipjms.prefix" .root -}}
- name: db-password
  secret:
    secretName: {{ $p }}db-{{ .name }}-{{ if eq .root.Values.postgres.mode "cloudnativepg" }}app{{ else }}password{{ end }}
    defaultMode: 0440
    items: [{key: password, path: password}]
{{- if eq .root.Values.postgres.mode "cloudnativepg" }}
- name: db-ca
  secret:
    secretName: {{ $p }}db-{{ .name }}-ca
    defaultMode: 0444
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end }}

{{- define "ipjms.dbMounts" -}}
- {name: db-password, mountPath: /run/ipjms/db, readOnly: true}
{{- if eq .Values.postgres.mode "cloudnativepg" }}
- {name: db-ca, mountPath: /run/ipjms/db-ca, readOnly: true}
{{- end }}
{{- end }}

{{/* Prefer spreading the pods of one workload over the cluster's nodes. */}}
{{- define "ipjms.antiAffinity" -}}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "ipjms.selector" . | nindent 14 }}
{{- end }}

{{/*
One PostgreSQL for one instance.
  postgres.mode = cloudnativepg (production): a CloudNativePG Cluster (TLS from the operator,
    plaintext refused in pg_hba, replicas spread over hosts, PodMonitor, continuous WAL archiving
    and base backups to an object store with server-side encryption, point-in-time recovery) and
    a ScheduledBackup.
  postgres.mode = statefulset (local demo only): one hand-written PostgreSQL pod without TLS or
    backups.
Either way a NetworkPolicy admits only pods of the same instance labelled as its clients.
Call with (dict "root" $ "instance" "node-tertiary" "name" "tertiary").
*/}}
{{- define "ipjms.postgres" -}}
{{- $p := include "ipjms.prefix" .root }}
{{- $ctx := dict "root" .root "component" "database" "instance" (printf "%s%s" $p .instance) }}
{{- $pg := .root.Values.postgres }}
{{- if eq $pg.mode "cloudnativepg" }}
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata:
  name: {{ $p }}db-{{ .name }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  instances: {{ $pg.instances }}
  imageName: {{ $pg.imageName }}
  primaryUpdateStrategy: unsupervised
  enableSuperuserAccess: false
  inheritedMetadata:
    labels:
      {{- include "ipjms.labels" $ctx | nindent 6 }}
  bootstrap:
    {{- if $pg.recovery.enabled }}
    recovery:
      source: {{ $p }}db-{{ .name }}-origin
      {{- if $pg.recovery.targetTime }}
      recoveryTarget:
        targetTime: {{ $pg.recovery.targetTime | quote }}
      {{- end }}
    {{- else }}
    initdb:
      database: ipjms
      owner: ipjms
    {{- end }}
  {{- if $pg.recovery.enabled }}
  externalClusters:
    - name: {{ $p }}db-{{ .name }}-origin
      barmanObjectStore:
        destinationPath: {{ $pg.backup.destinationPath }}
        serverName: {{ $pg.recovery.serverNamePrefix }}db-{{ .name }}
        {{- if $pg.backup.endpointURL }}
        endpointURL: {{ $pg.backup.endpointURL }}
        {{- end }}
        s3Credentials:
          accessKeyId: {name: {{ $pg.backup.s3CredentialsSecret }}, key: ACCESS_KEY_ID}
          secretAccessKey: {name: {{ $pg.backup.s3CredentialsSecret }}, key: ACCESS_SECRET_KEY}
        wal:
          maxParallel: 4
  {{- end }}
  postgresql:
    parameters:
      ssl_min_protocol_version: TLSv1.3
      password_encryption: scram-sha-256
    pg_hba:
      # every connection over TLS: a plaintext one is refused before authentication
      - hostnossl all all 0.0.0.0/0 reject
      - hostnossl all all ::/0 reject
      - hostssl ipjms ipjms all scram-sha-256
  storage:
    size: {{ $pg.storage }}
  resources:
    {{- toYaml $pg.resources | nindent 4 }}
  affinity:
    enablePodAntiAffinity: true
    topologyKey: kubernetes.io/hostname
    podAntiAffinityType: {{ $pg.antiAffinity }}
  monitoring:
    enablePodMonitor: {{ .root.Values.monitoring.enabled }}
  backup:
    retentionPolicy: {{ $pg.backup.retention | quote }}
    barmanObjectStore:
      destinationPath: {{ $pg.backup.destinationPath }}
      {{- if $pg.backup.endpointURL }}
      endpointURL: {{ $pg.backup.endpointURL }}
      {{- end }}
      s3Credentials:
        accessKeyId: {name: {{ $pg.backup.s3CredentialsSecret }}, key: ACCESS_KEY_ID}
        secretAccessKey: {name: {{ $pg.backup.s3CredentialsSecret }}, key: ACCESS_SECRET_KEY}
      wal:
        compression: gzip
        encryption: {{ $pg.backup.encryption }}
      data:
        compression: gzip
        encryption: {{ $pg.backup.encryption }}
---
apiVersion: postgresql.cnpg.io/v1
kind: ScheduledBackup
metadata:
  name: {{ $p }}db-{{ .name }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  schedule: {{ $pg.backup.schedule | quote }}
  immediate: true
  backupOwnerReference: self
  method: barmanObjectStore
  cluster:
    name: {{ $p }}db-{{ .name }}
{{- if $pg.backup.onDemand }}
---
# The restore drill's first step: a base backup of this database now (postgres.backup.onDemand).
apiVersion: postgresql.cnpg.io/v1
kind: Backup
metadata:
  name: {{ $p }}db-{{ .name }}-{{ $pg.backup.onDemand }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  method: barmanObjectStore
  cluster:
    name: {{ $p }}db-{{ .name }}
{{- end }}
{{- else }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $p }}db-{{ .name }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  serviceName: {{ $p }}db-{{ .name }}
  replicas: 1
  selector:
    matchLabels:
      {{- include "ipjms.selector" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "ipjms.labels" $ctx | nindent 8 }}
    spec:
      {{- include "ipjms.podSecurity" (dict "uid" 999) | nindent 6 }}
      containers:
        - name: postgres
          image: {{ $pg.image }}
          ports:
            - {name: postgres, containerPort: 5432}
          env:
            - {name: POSTGRES_USER, value: ipjms}
            - {name: POSTGRES_DB, value: ipjms}
            - {name: POSTGRES_PASSWORD_FILE, value: /run/ipjms/db/password}
            - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
          volumeMounts:
            - {name: data, mountPath: /var/lib/postgresql/data}
            - {name: password, mountPath: /run/ipjms/db, readOnly: true}
            - {name: run, mountPath: /var/run/postgresql}
          readinessProbe:
            exec:
              command: ["pg_isready", "-U", "ipjms", "-d", "ipjms", "-h", "127.0.0.1"]
            periodSeconds: 10
            timeoutSeconds: 5
          livenessProbe:
            exec:
              command: ["pg_isready", "-U", "ipjms", "-d", "ipjms", "-h", "127.0.0.1"]
            initialDelaySeconds: 30
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 6
          resources:
            {{- toYaml $pg.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities:
              drop: ["ALL"]
      volumes:
        - name: password
          secret: {secretName: {{ $p }}db-{{ .name }}-password, defaultMode: 0440}
        - name: run
          emptyDir: {}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {{ $pg.storage }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $p }}db-{{ .name }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "ipjms.selector" $ctx | nindent 4 }}
  ports:
    - {name: postgres, port: 5432, targetPort: postgres}
{{- end }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $p }}db-{{ .name }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "ipjms.selector" $ctx | nindent 6 }}
  policyTypes: ["Ingress", "Egress"]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              ipjms.io/release: {{ .root.Release.Name }}
              ipjms.io/instance: {{ $p }}{{ .instance }}
              ipjms.io/db-client: "true"
      ports:
        - {protocol: TCP, port: 5432}
    {{- if eq $pg.mode "cloudnativepg" }}
    # the cluster's own instances (streaming replication, instance manager)
    - from:
        - podSelector:
            matchLabels:
              cnpg.io/cluster: {{ $p }}db-{{ .name }}
      ports:
        - {protocol: TCP, port: 5432}
        - {protocol: TCP, port: 8000}
    # the CloudNativePG operator (instance status) and the metrics scraper
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $pg.operatorNamespace }}
      ports:
        - {protocol: TCP, port: 8000}
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ .root.Values.monitoring.namespace }}
      ports:
        - {protocol: TCP, port: 9187}
    {{- end }}
  egress:
    {{- if eq $pg.mode "cloudnativepg" }}
    - to:
        - podSelector:
            matchLabels:
              cnpg.io/cluster: {{ $p }}db-{{ .name }}
      ports:
        - {protocol: TCP, port: 5432}
        - {protocol: TCP, port: 8000}
    # the Kubernetes API (instance manager) and the backup object store (HTTPS)
    - to:
        - ipBlock: {cidr: {{ $pg.backup.egressCIDR }}}
      ports:
        - {protocol: TCP, port: 443}
        - {protocol: TCP, port: 6443}
    {{- else }}
    []
    {{- end }}
{{- end }}
