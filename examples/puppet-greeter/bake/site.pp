# Configures the image being baked: kiln runs `puppet apply` of this manifest inside it.
class { 'greeter':
  greeting => 'hello from puppet',
}
