# The chart's values from the module's variables: the roles and settings become the
# chart's `config` (one to one with Pylon's TOML), the exposure its `p2p` block. Only
# locals: the logic is tested offline with `terraform test`.

locals {
  # Roles named: exactly those, each with its settings. null: the profile decides.
  roles = var.roles == null ? null : {
    for r in var.roles : r => lookup(var.role_settings, r, {})
  }

  config = merge(
    var.config,
    { profile = var.profile },
    local.roles == null ? {} : { roles = local.roles },
  )

  pod_names = [for i in range(var.replicas) : "${var.release_name}-${i}"]

  # What each pod is reached at: its Service (and, with NodePort, the node port), or the
  # node's address on the p2p port.
  ports = {
    for i, pod in local.pod_names : pod => {
      tcp       = var.p2p_port
      udp       = var.p2p_port
      node_port = var.exposure == "service" && var.service_type == "NodePort" && length(var.node_ports) > 0 ? var.node_ports[i] : null
      address   = length(var.load_balancer_ips) > 0 ? var.load_balancer_ips[i] : null
      service   = var.exposure == "service" ? "${pod}-p2p" : null
    }
  }

  values = merge(
    {
      config       = local.config
      replicaCount = var.replicas
      image        = { repository = var.image.repository, tag = var.image.tag }
      p2p = {
        port     = var.p2p_port
        exposure = var.exposure
        service = {
          type            = var.service_type
          loadBalancerIPs = var.load_balancer_ips
          nodePorts       = var.node_ports
        }
      }
      announce = {
        hostIP    = var.exposure != "service"
        dnsDomain = ""
      }
      persistence = {
        size             = var.storage_size
        storageClassName = var.storage_class
      }
      metrics = {
        serviceMonitor = { enabled = var.monitoring.service_monitor }
        prometheusRule = { enabled = var.monitoring.prometheus_rule }
        dashboards     = { enabled = var.monitoring.dashboards }
      }
    },
    var.resources == null ? {} : { resources = var.resources },
  )
}
