variable "release_name" {
  description = "The Helm release's name: the StatefulSet, its pods (<name>-0, -1, …) and Services are named after it."
  type        = string
  default     = "pylon"
  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a DNS label of at most 42 characters (lower case letters, digits, '-'), so pod and Service names stay valid."
  }
}

variable "roles" {
  description = "Roles to run (bootstrap, relay, autonat, booster). null: the profile decides (\"public\": the DHT once reachable, AutoNAT server, a relay with conservative limits). An empty list with profile \"minimal\": the node core only."
  type        = list(string)
  default     = null
  validation {
    condition     = var.roles == null || alltrue([for r in coalesce(var.roles, []) : contains(["bootstrap", "relay", "autonat", "booster"], r)])
    error_message = "roles may name only bootstrap, relay, autonat and booster."
  }
  validation {
    condition     = var.roles == null || length(distinct(coalesce(var.roles, []))) == length(coalesce(var.roles, []))
    error_message = "roles must not name a role twice."
  }
}

variable "role_settings" {
  description = "Settings per role, one to one with the TOML [roles.NAME] sections (README.md, Configuration), e.g. { relay = { max_circuits = 256 } }."
  type        = map(map(any))
  default     = {}
  validation {
    condition     = alltrue([for r in keys(var.role_settings) : contains(["bootstrap", "relay", "autonat", "booster"], r)])
    error_message = "role_settings keys must be bootstrap, relay, autonat or booster."
  }
}

variable "profile" {
  description = "What runs when no role is named: \"public\" or \"minimal\"."
  type        = string
  default     = "public"
  validation {
    condition     = contains(["public", "minimal"], var.profile)
    error_message = "profile must be \"public\" or \"minimal\"."
  }
}

variable "config" {
  description = "Any other part of Pylon's TOML config, as a map of sections (e.g. { kad = { bootstrap = [\"/dns4/…\"] } }); merged under the roles."
  type        = any
  default     = {}
}

variable "replicas" {
  description = "Pods, each its own peer with its own key, volume and p2p Service."
  type        = number
  default     = 1
  validation {
    condition     = var.replicas >= 1 && var.replicas <= 64 && floor(var.replicas) == var.replicas
    error_message = "replicas must be a whole number from 1 to 64."
  }
}

variable "storage_size" {
  description = "Size of each pod's volume (key and database), as a Kubernetes quantity."
  type        = string
  default     = "10Gi"
  validation {
    condition     = can(regex("^[1-9][0-9]*(Mi|Gi|Ti)$", var.storage_size))
    error_message = "storage_size must be a quantity in Mi, Gi or Ti, e.g. \"10Gi\"."
  }
}

variable "storage_class" {
  description = "StorageClass of the volumes; empty: the cluster's default."
  type        = string
  default     = ""
}

variable "exposure" {
  description = "How peers reach the pods: \"service\" (one Service per pod), \"hostPort\" or \"hostNetwork\" (the node's address)."
  type        = string
  default     = "service"
  validation {
    condition     = contains(["service", "hostPort", "hostNetwork"], var.exposure)
    error_message = "exposure must be \"service\", \"hostPort\" or \"hostNetwork\"."
  }
}

variable "service_type" {
  description = "With exposure \"service\": LoadBalancer (default) or NodePort."
  type        = string
  default     = "LoadBalancer"
  validation {
    condition     = contains(["LoadBalancer", "NodePort"], var.service_type)
    error_message = "service_type must be LoadBalancer or NodePort."
  }
  # The booster runs when roles names it, or, while roles is null, when config.roles
  # has it (a roles list replaces config.roles). The chart refuses it too, but only when
  # helm_release applies.
  validation {
    condition     = !(var.exposure == "service" && var.service_type == "NodePort" && (var.roles == null ? try(var.config.roles.booster, null) != null : contains(coalesce(var.roles, []), "booster")))
    error_message = "service_type NodePort with the booster role (config.roles.booster): every head port would take a node port for each pod (2 x max_heads per replica, with TCP and QUIC) out of the cluster's node port range (30000-32767 by default); use service_type LoadBalancer, or exposure hostPort or hostNetwork."
  }
}

variable "p2p_port" {
  description = "The p2p port, TCP and UDP (QUIC v1)."
  type        = number
  default     = 4001
  validation {
    condition     = var.p2p_port >= 1024 && var.p2p_port <= 65535 && floor(var.p2p_port) == var.p2p_port
    error_message = "p2p_port must be from 1024 to 65535 (the pods run without privileges)."
  }
}

variable "load_balancer_ips" {
  description = "One address per pod, by ordinal, requested for its Service and announced by the pod; empty: the cloud picks and the node learns its address from peers."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for ip in var.load_balancer_ips : can(cidrhost("${ip}/32", 0)) || can(cidrhost("${ip}/128", 0))])
    error_message = "load_balancer_ips must be IP addresses."
  }
  validation {
    condition     = length(var.load_balancer_ips) == 0 || length(var.load_balancer_ips) == var.replicas
    error_message = "load_balancer_ips must be empty or hold one address per replica."
  }
}

variable "node_ports" {
  description = "With service_type NodePort: one port per pod, by ordinal (30000–32767); empty: allocated by the cluster."
  type        = list(number)
  default     = []
  validation {
    condition     = alltrue([for p in var.node_ports : p >= 30000 && p <= 32767])
    error_message = "node_ports must be in 30000–32767."
  }
  validation {
    condition     = length(var.node_ports) == 0 || length(var.node_ports) == var.replicas
    error_message = "node_ports must be empty or hold one port per replica."
  }
  validation {
    condition     = length(distinct(var.node_ports)) == length(var.node_ports)
    error_message = "node_ports must not repeat a port."
  }
}

variable "monitoring" {
  description = "Prometheus-operator objects and Grafana dashboards to install with the chart."
  type = object({
    service_monitor = optional(bool, false)
    prometheus_rule = optional(bool, false)
    dashboards      = optional(bool, false)
  })
  default = {}
}

variable "image" {
  description = "The container image; tag empty: the chart's appVersion."
  type = object({
    repository = optional(string, "pylon")
    tag        = optional(string, "")
  })
  default = {}
}

variable "resources" {
  description = "The pods' resources, as Kubernetes writes them; null: the chart's defaults."
  type        = any
  default     = null
}
