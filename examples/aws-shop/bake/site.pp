# Applied on the builder with `puppet apply --detailed-exitcodes` (kiln sends bake/ over SSM).
class { 'shop':
  greeting => 'hello from puppet',
}
