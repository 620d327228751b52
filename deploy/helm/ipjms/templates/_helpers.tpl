{{/* Labels every object carries; `instance` groups a service with its own database. */}}
{{- define "ipjms.labels" -}}
app.kubernetes.io/name: ipjms
app.kubernetes.io/part-of: ipjms
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
ipjms.io/instance: {{ .instance }}
{{- end }}

{{- define "ipjms.selector" -}}
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

{{- define "ipjms.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
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

{{- define "ipjms.httpProbes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 20
  timeoutSeconds: 5
{{- end }}

{{/*
One PostgreSQL server for one instance: StatefulSet, headless Service, and a NetworkPolicy that
admits only pods of the same instance labelled as its clients.
Call with (dict "root" $ "instance" "node-tertiary" "name" "tertiary").
*/}}
{{- define "ipjms.postgres" -}}
{{- $ctx := dict "root" .root "component" "database" "instance" .instance }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db-{{ .name }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  serviceName: db-{{ .name }}
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
          image: {{ .root.Values.postgres.image }}
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
            {{- toYaml .root.Values.postgres.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities:
              drop: ["ALL"]
      volumes:
        - name: password
          secret: {secretName: db-{{ .name }}-password, defaultMode: 0440}
        - name: run
          emptyDir: {}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {{ .root.Values.postgres.storage }}
---
apiVersion: v1
kind: Service
metadata:
  name: db-{{ .name }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "ipjms.selector" $ctx | nindent 4 }}
  ports:
    - {name: postgres, port: 5432, targetPort: postgres}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-{{ .name }}
  labels:
    {{- include "ipjms.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "ipjms.selector" $ctx | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              ipjms.io/instance: {{ .instance }}
              ipjms.io/db-client: "true"
      ports:
        - {protocol: TCP, port: 5432}
{{- end }}
