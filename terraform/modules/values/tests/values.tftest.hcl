# `terraform test` in terraform/modules/values: the chart values the module computes, and
# the variables it refuses. No provider, no cluster: plans only.

run "defaults_are_the_public_profile" {
  command = plan

  assert {
    condition     = output.values.config == { profile = "public" }
    error_message = "with no role named, the profile alone decides the roles"
  }
  assert {
    condition     = output.values.replicaCount == 1 && output.values.p2p.exposure == "service"
    error_message = "one pod behind its own Service by default"
  }
  assert {
    condition     = output.values.persistence.size == "10Gi" && !output.values.announce.hostIP
    error_message = "a 10Gi volume; the Service exposure does not announce the node's IP"
  }
  assert {
    condition     = !output.values.metrics.serviceMonitor.enabled && !output.values.metrics.dashboards.enabled
    error_message = "monitoring objects are opt-in"
  }
}

run "roles_named_run_alone_with_their_settings" {
  command = plan
  variables {
    roles         = ["relay", "bootstrap"]
    role_settings = { relay = { max_circuits = 256 } }
  }

  assert {
    condition     = keys(output.values.config.roles) == ["bootstrap", "relay"]
    error_message = "exactly the roles named"
  }
  assert {
    condition     = output.values.config.roles.relay.max_circuits == 256 && length(output.values.config.roles.bootstrap) == 0
    error_message = "each role's settings, one to one with [roles.NAME]"
  }
}

run "minimal_profile_without_roles" {
  command = plan
  variables {
    profile = "minimal"
    roles   = []
  }

  assert {
    condition     = output.values.config.profile == "minimal" && length(output.values.config.roles) == 0
    error_message = "the node core only"
  }
}

run "one_port_map_entry_per_pod" {
  command = plan
  variables {
    release_name      = "p2p"
    replicas          = 3
    service_type      = "NodePort"
    node_ports        = [30401, 30402, 30403]
    load_balancer_ips = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
  }

  assert {
    condition     = keys(output.pods) == ["p2p-0", "p2p-1", "p2p-2"]
    error_message = "pods are named after the release, by ordinal"
  }
  assert {
    condition     = output.pods["p2p-2"].node_port == 30403 && output.pods["p2p-2"].address == "203.0.113.3"
    error_message = "per-pod ports and addresses follow the ordinal"
  }
  assert {
    condition     = output.pods["p2p-0"].service == "p2p-0-p2p" && output.pods["p2p-0"].tcp == 4001 && output.pods["p2p-0"].udp == 4001
    error_message = "TCP and QUIC share the p2p port, behind the pod's Service"
  }
  assert {
    condition     = jsonencode(output.values.p2p.service.nodePorts) == jsonencode([30401, 30402, 30403])
    error_message = "node ports reach the chart"
  }
}

run "host_network_announces_the_node_ip" {
  command = plan
  variables {
    exposure = "hostNetwork"
    p2p_port = 4101
  }

  assert {
    condition     = output.values.announce.hostIP && output.pods["pylon-0"].service == null && output.pods["pylon-0"].node_port == null
    error_message = "on the node's network the pod announces the node's IP, without a Service"
  }
  assert {
    condition     = yamldecode(output.values_yaml).p2p.exposure == "hostNetwork" && yamldecode(output.values_yaml).p2p.port == 4101
    error_message = "the YAML handed to helm_release carries the same values"
  }
}

run "monitoring_and_extra_config" {
  command = plan
  variables {
    monitoring = { service_monitor = true, prometheus_rule = true, dashboards = true }
    config     = { kad = { bootstrap = ["/dns4/boot.example.net/tcp/4001/p2p/12D3KooWAbc"] } }
  }

  assert {
    condition     = output.values.metrics.serviceMonitor.enabled && output.values.metrics.prometheusRule.enabled && output.values.metrics.dashboards.enabled
    error_message = "the monitoring switches reach the chart"
  }
  assert {
    condition     = output.values.config.kad.bootstrap[0] == "/dns4/boot.example.net/tcp/4001/p2p/12D3KooWAbc" && output.values.config.profile == "public"
    error_message = "other config sections pass through beside the profile"
  }
}

run "an_unknown_role_is_refused" {
  command = plan
  variables {
    roles = ["relay", "lighthouse"]
  }
  expect_failures = [var.roles]
}

run "a_role_twice_is_refused" {
  command = plan
  variables {
    roles = ["relay", "relay"]
  }
  expect_failures = [var.roles]
}

run "a_bad_storage_size_is_refused" {
  command = plan
  variables {
    storage_size = "10GB"
  }
  expect_failures = [var.storage_size]
}

run "an_unknown_exposure_is_refused" {
  command = plan
  variables {
    exposure = "ingress"
  }
  expect_failures = [var.exposure]
}

run "addresses_must_match_the_replicas" {
  command = plan
  variables {
    replicas          = 2
    load_balancer_ips = ["203.0.113.1"]
  }
  expect_failures = [var.load_balancer_ips]
}

run "node_ports_must_be_in_range" {
  command = plan
  variables {
    service_type = "NodePort"
    node_ports   = [4001]
  }
  expect_failures = [var.node_ports]
}

run "the_booster_behind_load_balancers" {
  command = plan
  variables {
    config = { roles = { booster = { max_heads = 16 } } }
  }

  assert {
    condition     = output.values.config.roles.booster.max_heads == 16 && output.values.p2p.service.type == "LoadBalancer"
    error_message = "the booster reaches the chart through config.roles, behind LoadBalancer Services"
  }
}

run "the_booster_with_node_ports_is_refused" {
  command = plan
  variables {
    service_type = "NodePort"
    config       = { roles = { booster = {} } }
  }
  expect_failures = [var.service_type]
}

run "the_booster_as_a_role_with_settings" {
  command = plan
  variables {
    roles         = ["booster"]
    role_settings = { booster = { heads = 4, max_heads = 16, port_base = 5101 } }
  }

  assert {
    condition     = output.values.config.roles.booster.max_heads == 16 && output.values.config.roles.booster.port_base == 5101 && length(keys(output.values.config.roles)) == 1
    error_message = "roles = [\"booster\"] with its settings reaches the chart as config.roles.booster"
  }
}

run "the_booster_role_with_node_ports_is_refused" {
  command = plan
  variables {
    service_type = "NodePort"
    roles        = ["booster"]
  }
  expect_failures = [var.service_type]
}

run "privileged_ports_are_refused" {
  command = plan
  variables {
    p2p_port = 443
  }
  expect_failures = [var.p2p_port]
}

run "zero_replicas_are_refused" {
  command = plan
  variables {
    replicas = 0
  }
  expect_failures = [var.replicas]
}
