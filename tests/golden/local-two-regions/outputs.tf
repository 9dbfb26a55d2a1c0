output "nodes" {
  description = "Each node's region, replica, endpoint and health URL."
  value = {
    for key, node in var.nodes : key => {
      name       = "${var.stack}-${key}"
      region     = node.region
      replica    = node.replica
      port       = node.port
      endpoint   = "http://127.0.0.1:${node.port}"
      health_url = "http://127.0.0.1:${node.port}${node.health_path}"
      id         = terraform_data.node[key].id
    }
  }
}
