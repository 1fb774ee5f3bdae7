(function () {
  document.querySelectorAll('.drill').forEach(function (box) {
    var text = box.querySelector('.f-text');
    var mode = box.querySelector('.f-mode');
    var count = box.querySelector('.f-count');
    var items = Array.prototype.slice.call(box.querySelectorAll('details.q'));
    function apply() {
      var q = text.value.trim().toLowerCase();
      var m = mode.value;
      var shown = 0;
      items.forEach(function (d) {
        var ok = (m === 'all' || d.getAttribute('data-' + m) === '1') &&
          (!q || d.textContent.toLowerCase().indexOf(q) >= 0);
        d.style.display = ok ? '' : 'none';
        if (ok) { shown += 1; }
      });
      count.textContent = shown + ' of ' + items.length + ' shown';
    }
    text.addEventListener('input', apply);
    mode.addEventListener('change', apply);
    box.querySelector('.f-open').addEventListener('click', function () {
      items.forEach(function (d) { if (d.style.display !== 'none') { d.open = true; } });
    });
    box.querySelector('.f-close').addEventListener('click', function () {
      items.forEach(function (d) { d.open = false; });
    });
    apply();
  });
})();
