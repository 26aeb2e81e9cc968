# Each variable is passed to modules/values, which validates it; see its descriptions.

variable "release_name" {
  type    = string
  default = "pylon"
}

variable "namespace" {
  type    = string
  default = "pylon"
}

variable "create_namespace" {
  type    = bool
  default = true
}

variable "chart" {
  description = "The chart: a path or a packaged chart; empty: this repository's helm/pylon."
  type        = string
  default     = ""
}

variable "wait" {
  description = "Wait for the pods to be ready before the apply completes."
  type        = bool
  default     = false
}

variable "extra_values" {
  description = "More values files (YAML strings), applied after the computed ones."
  type        = list(string)
  default     = []
}

variable "roles" {
  type    = list(string)
  default = null
}

variable "role_settings" {
  type    = map(map(any))
  default = {}
}

variable "profile" {
  type    = string
  default = "public"
}

variable "config" {
  type    = any
  default = {}
}

variable "replicas" {
  type    = number
  default = 1
}

variable "storage_size" {
  type    = string
  default = "10Gi"
}

variable "storage_class" {
  type    = string
  default = ""
}

variable "exposure" {
  type    = string
  default = "service"
}

variable "service_type" {
  type    = string
  default = "LoadBalancer"
}

variable "p2p_port" {
  type    = number
  default = 4001
}

variable "load_balancer_ips" {
  type    = list(string)
  default = []
}

variable "node_ports" {
  type    = list(number)
  default = []
}

variable "monitoring" {
  type = object({
    service_monitor = optional(bool, false)
    prometheus_rule = optional(bool, false)
    dashboards      = optional(bool, false)
  })
  default = {}
}

variable "image" {
  type = object({
    repository = optional(string, "pylon")
    tag        = optional(string, "")
  })
  default = {}
}

variable "resources" {
  type    = any
  default = null
}
